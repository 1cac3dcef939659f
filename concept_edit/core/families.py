"""Backbone families as data: site tables, denoiser call conventions, defaults.

Example::

    >>> from concept_edit.core.families import detect_family, resolve_sites
    >>> fam = detect_family(pipe)                   # 'sd1', 'sd2', 'sdxl', 'sd3', 'flux' or 'pixart'
    >>> resolve_sites(pipe, "text_kv")[:2]
    ['down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k', '...attn2.to_v']

Site groups (patterns over the denoiser's module paths; every method names groups, never paths):

=========  ====================================================================================
text_kv    the projections that read text (UNet/PixArt ``attn2.to_k/to_v``; MMDiT ``add_k/v_proj``)
xattn      the text-side attention projections (UNet/PixArt ``attn2.*``; MMDiT ``add_q/k/v_proj``,
           ``to_add_out``); FLUX single blocks share q/k/v between text and image, so they are
           counted as self-attention, not here
selfattn   image-side attention projections (``attn1.*``; MMDiT ``to_q/k/v, to_out.0``)
noxattn    every layer of the attention/transformer blocks except ``xattn`` (slider default)
text_in    where text enters the denoiser (``context_embedder``, ``caption_projection``)
resnets    resnet convolutions (``conv1``, ``conv2``; UNets only)
time_emb   timestep (and guidance) embeddings
esd_u      everything except ``xattn`` and ``time_emb`` (ESD-u)
all        every Linear/Conv layer of the denoiser
=========  ====================================================================================
"""
from __future__ import annotations

import dataclasses

from torch import nn

from .paths import SiteError, match_paths

_UNET_ATTN = ("to_q", "to_k", "to_v", "to_out.0")


def _attn(prefix: str, names=_UNET_ATTN) -> tuple[str, ...]:
    return tuple(f"{prefix}.{n}" for n in names)


_UNET_SITES = {
    "text_kv": (("*attn2.to_k", "*attn2.to_v"), ()),
    "xattn": (_attn("*attn2"), ()),
    "selfattn": (_attn("*attn1"), ()),
    "noxattn": (("*attentions.*",), ("*attn2.*",)),
    "text_in": ((), ()),
    "resnets": (("*resnets.*.conv1", "*resnets.*.conv2"), ()),
    "time_emb": (("time_embedding.*", "add_embedding.*"), ()),
    "esd_u": (("*",), ("*attn2.*", "time_embedding.*", "add_embedding.*")),
    "all": (("*",), ()),
}
_MMDIT_TEXT = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
_MMDIT_SITES = {
    "text_kv": (("transformer_blocks.*.attn.add_k_proj", "transformer_blocks.*.attn.add_v_proj"), ()),
    "xattn": (_attn("transformer_blocks.*.attn", _MMDIT_TEXT), ()),
    "selfattn": (_attn("transformer_blocks.*.attn") + _attn("transformer_blocks.*.attn2")
                 + _attn("single_transformer_blocks.*.attn", ("to_q", "to_k", "to_v")), ()),
    "noxattn": (("transformer_blocks.*", "single_transformer_blocks.*"),
                _attn("transformer_blocks.*.attn", _MMDIT_TEXT)),
    "text_in": (("context_embedder",), ()),
    "resnets": ((), ()),
    "time_emb": (("time_text_embed.timestep_embedder.*", "time_text_embed.guidance_embedder.*"), ()),
    "esd_u": (("*",), _attn("transformer_blocks.*.attn", _MMDIT_TEXT)
              + ("time_text_embed.timestep_embedder.*", "time_text_embed.guidance_embedder.*")),
    "all": (("*",), ()),
}
_PIXART_SITES = {
    "text_kv": (("transformer_blocks.*.attn2.to_k", "transformer_blocks.*.attn2.to_v"), ()),
    "xattn": (_attn("transformer_blocks.*.attn2"), ()),
    "selfattn": (_attn("transformer_blocks.*.attn1"), ()),
    "noxattn": (("transformer_blocks.*",), ("transformer_blocks.*.attn2.*",)),
    "text_in": (("caption_projection.*",), ()),
    "resnets": ((), ()),
    "time_emb": (("adaln_single.*",), ()),
    "esd_u": (("*",), ("transformer_blocks.*.attn2.*", "adaln_single.*")),
    "all": (("*",), ()),
}
SITE_GROUPS = tuple(_UNET_SITES)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    description: str
    denoiser: str                       # pipeline attribute of the denoiser
    sites: dict
    text_kwargs: tuple[str, ...]        # denoiser kwargs that carry the prompt
    shared_kwargs: tuple[str, ...] = ()  # denoiser kwargs without a batch dimension
    input_kwarg: str = "sample"
    timestep_scale: float = 1.0         # the denoiser sees scheduler timesteps / this
    learned_sigma: bool = False
    size: int = 512
    steps: int = 30
    guidance: float = 7.5
    pipeline_kwargs: tuple = ()


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sd1", "Stable Diffusion 1.x (UNet, epsilon)", "unet", _UNET_SITES,
           ("encoder_hidden_states",)),
    Family("sd2", "Stable Diffusion 2.x (UNet, v-prediction)", "unet", _UNET_SITES,
           ("encoder_hidden_states",), size=768),
    Family("sdxl", "Stable Diffusion XL (UNet, two text encoders)", "unet", _UNET_SITES,
           ("encoder_hidden_states", "added_cond_kwargs.text_embeds"), size=1024, guidance=5.0),
    Family("sd3", "Stable Diffusion 3 (MMDiT, flow matching)", "transformer", _MMDIT_SITES,
           ("encoder_hidden_states", "pooled_projections"), input_kwarg="hidden_states",
           size=1024, steps=28, guidance=7.0),
    Family("flux", "FLUX (MMDiT, flow matching, guidance-distilled)", "transformer", _MMDIT_SITES,
           ("encoder_hidden_states", "pooled_projections"), shared_kwargs=("txt_ids", "img_ids"),
           input_kwarg="hidden_states", timestep_scale=1000.0, size=1024, steps=28, guidance=3.5),
    Family("pixart", "PixArt (DiT with cross-attention, T5)", "transformer", _PIXART_SITES,
           ("encoder_hidden_states", "encoder_attention_mask"), input_kwarg="hidden_states",
           learned_sigma=True, size=1024, steps=20, guidance=4.5,
           pipeline_kwargs=(("use_resolution_binning", False), ("clean_caption", False))),
)}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def detect_family(pipe) -> str:
    """Family name of a loaded diffusers pipeline."""
    cls = type(pipe).__name__
    if cls.startswith("StableDiffusionXL"):
        return "sdxl"
    if cls.startswith("StableDiffusion3"):
        return "sd3"
    if cls.startswith("Flux"):
        return "flux"
    if cls.startswith("PixArt"):
        return "pixart"
    if cls.startswith("StableDiffusion") and getattr(pipe, "unet", None) is not None:
        pred = getattr(pipe.scheduler.config, "prediction_type", "epsilon")
        return "sd2" if pred == "v_prediction" else "sd1"
    raise ValueError(f"unsupported pipeline {cls}; concept_edit supports "
                     "StableDiffusion(XL/3), Flux and PixArt pipelines")


def denoiser_of(pipe) -> nn.Module:
    return getattr(pipe, get_family(detect_family(pipe)).denoiser)


def resolve_sites(model_or_pipe, group: str, family: str | None = None) -> list[str]:
    """Module paths (relative to the denoiser) of a site group; SiteError if unknown or empty."""
    if isinstance(model_or_pipe, nn.Module):
        den, fam = model_or_pipe, get_family(family or "sd1")
    else:
        fam = get_family(family or detect_family(model_or_pipe))
        den = getattr(model_or_pipe, fam.denoiser)
    if group not in fam.sites:
        raise SiteError(f"unknown site group {group!r}; choose one of {', '.join(fam.sites)}")
    inc, exc = fam.sites[group]
    return match_paths(den, inc, exc)


def site_table(pipe) -> dict:
    """{group: [(path, weight shape), ...]} for every group of the pipeline's family."""
    fam = get_family(detect_family(pipe))
    den = getattr(pipe, fam.denoiser)
    from .paths import get_module

    out = {}
    for g in fam.sites:
        rows = []
        for p in resolve_sites(pipe, g):
            m = get_module(den, p)
            w = getattr(m, "weight", None) if not hasattr(m, "base_layer") else m.base_layer.weight
            rows.append((p, tuple(w.shape) if w is not None else None))
        out[g] = rows
    return out
