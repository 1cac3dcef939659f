"""Site tables per denoiser kind (data): group -> (include patterns, exclude patterns).

Groups (every method names groups, never paths):

=========  ====================================================================================
text_kv    the projections that read text (UNet/PixArt ``attn2.to_k/to_v``; MMDiT ``add_k/v_proj``)
xattn      the text-side attention projections (UNet/PixArt ``attn2.*``; MMDiT ``add_q/k/v_proj``,
           ``to_add_out``, and ``time_text_embed.text_embedder``, the pooled text); FLUX single
           blocks share q/k/v between text and image, so they are counted as self-attention
selfattn   image-side attention projections (``attn1.*``; MMDiT ``to_q/k/v, to_out.0``)
noxattn    every layer of the attention/transformer blocks except ``xattn`` (slider default)
text_in    where text enters the denoiser (``context_embedder``, ``caption_projection``)
pooled     the first layer reading the pooled text embedding (SD3/FLUX ``time_text_embed.
           text_embedder.linear_1``, which feeds every block's AdaLN); empty elsewhere
resnets    resnet convolutions (``conv1``, ``conv2``; UNets only)
time_emb   timestep (and guidance) embeddings
esd_u      everything except ``xattn`` and ``time_emb`` (ESD-u)
all        every Linear/Conv layer of the denoiser
=========  ====================================================================================
"""
from __future__ import annotations

_UNET_ATTN = ("to_q", "to_k", "to_v", "to_out.0")
_MMDIT_TEXT = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def _attn(prefix: str, names=_UNET_ATTN) -> tuple[str, ...]:
    return tuple(f"{prefix}.{n}" for n in names)


UNET = {
    "text_kv": (("*attn2.to_k", "*attn2.to_v"), ()),
    "xattn": (_attn("*attn2"), ()),
    "selfattn": (_attn("*attn1"), ()),
    "noxattn": (("*attentions.*",), ("*attn2.*",)),
    "text_in": ((), ()),
    "pooled": ((), ()),  # SDXL's add_embedding mixes the pooled text with time ids: not offered
    "resnets": (("*resnets.*.conv1", "*resnets.*.conv2"), ()),
    "time_emb": (("time_embedding.*", "add_embedding.*"), ()),
    "esd_u": (("*",), ("*attn2.*", "time_embedding.*", "add_embedding.*")),
    "all": (("*",), ()),
}
MMDIT = {
    "text_kv": (("transformer_blocks.*.attn.add_k_proj", "transformer_blocks.*.attn.add_v_proj"), ()),
    # the pooled-text projection (AdaLN input) reads text too: on the toy MMDiT it decides the shape
    "xattn": (_attn("transformer_blocks.*.attn", _MMDIT_TEXT) + ("time_text_embed.text_embedder.*",), ()),
    "selfattn": (_attn("transformer_blocks.*.attn") + _attn("transformer_blocks.*.attn2")
                 + _attn("single_transformer_blocks.*.attn", ("to_q", "to_k", "to_v")), ()),
    "noxattn": (("transformer_blocks.*", "single_transformer_blocks.*"),
                _attn("transformer_blocks.*.attn", _MMDIT_TEXT)),
    "text_in": (("context_embedder",), ()),
    "pooled": (("time_text_embed.text_embedder.linear_1",), ()),
    "resnets": ((), ()),
    "time_emb": (("time_text_embed.timestep_embedder.*", "time_text_embed.guidance_embedder.*"), ()),
    "esd_u": (("*",), _attn("transformer_blocks.*.attn", _MMDIT_TEXT)
              + ("time_text_embed.*",)),
    "all": (("*",), ()),
}
PIXART = {
    "text_kv": (("transformer_blocks.*.attn2.to_k", "transformer_blocks.*.attn2.to_v"), ()),
    "xattn": (_attn("transformer_blocks.*.attn2"), ()),
    "selfattn": (_attn("transformer_blocks.*.attn1"), ()),
    "noxattn": (("transformer_blocks.*",), ("transformer_blocks.*.attn2.*",)),
    "text_in": (("caption_projection.*",), ()),
    "pooled": ((), ()),
    "resnets": ((), ()),
    "time_emb": (("adaln_single.*",), ()),
    "esd_u": (("*",), ("transformer_blocks.*.attn2.*", "adaln_single.*")),
    "all": (("*",), ()),
}
SITE_GROUPS = tuple(UNET)
