"""Backbones: the ONLY place that names a model family. Everything else asks the backbone.

Example::

    >>> from concept_edit.core.backbones import backbone_of
    >>> bb = backbone_of(pipe)                    # detected once per pipeline, then cached
    >>> bb.name, bb.denoiser, bb.prediction_type(pipe)
    ('sd1', 'unet', 'epsilon')
    >>> bb.sites(pipe, "text_kv")[:1]             # module paths of a site group
    ['down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k']
    >>> cond = bb.encode(pipe, ["a circle"])      # the denoiser's text keyword inputs
    >>> bb.size_multiple(pipe), bb.pack(pipe, latents).shape

A backbone is data (site tables, text keyword names, defaults, tokenizer segments) plus a few
small functions (prompt encoding, latent packing). Adding a family = adding one entry here.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Callable

from torch import nn

from ..paths import SiteError, get_module, match_paths
from . import sites as _sites
from . import text as _text
from .sites import SITE_GROUPS


def _identity_pack(pipe, z):
    return z


def _flux_pack(pipe, z):
    b, c, h, w = z.shape
    return pipe._pack_latents(z, b, c, h, w)


def _flux_unpack(pipe, z, height, width):
    h = height or 2 * int(z.shape[1] ** 0.5) * pipe.vae_scale_factor
    return pipe._unpack_latents(z, h, width or h, pipe.vae_scale_factor)


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    description: str
    denoiser: str                       # pipeline attribute of the denoiser
    site_table: dict
    text_kwargs: tuple[str, ...]        # denoiser kwargs that carry the prompt
    encoder: Callable = _text.encode_sd
    shared_kwargs: tuple[str, ...] = ()  # denoiser kwargs without a batch dimension
    input_kwarg: str = "sample"
    positional_call: bool = False       # denoiser(sample, timestep, ...) (UNets)
    timestep_scale: float = 1.0         # the denoiser sees scheduler timesteps / this
    learned_sigma: bool = False
    size: int = 512
    steps: int = 30
    guidance: float = 7.5
    pipeline_kwargs: tuple = ()
    segments: tuple = (("tokenizer", 0),)  # (tokenizer attribute, offset in the text sequence)
    text_reads_timestep: bool = False   # the text-reading layers see timestep-dependent inputs
    packed_latents: bool = False
    patch_factor: int = 1               # extra size multiple of packed latents
    single_file: tuple = ()             # (pipeline class, key prefix identifying a checkpoint)
    pack_fn: Callable = _identity_pack
    unpack_fn: Callable | None = None
    sampler: dict = dataclasses.field(default_factory=dict)  # the native sampler's data (SAMPLER)
    null_stream: tuple = ()             # (encoder attribute, n): without it, n identical null tokens

    # -- sites ---------------------------------------------------------------------------------
    def sites(self, pipe_or_module, group: str) -> list[str]:
        """Module paths (relative to the denoiser) of a site group; SiteError if unknown."""
        den = pipe_or_module if isinstance(pipe_or_module, nn.Module) else getattr(pipe_or_module, self.denoiser)
        if group not in self.site_table:
            raise SiteError(f"unknown site group {group!r}; choose one of {', '.join(self.site_table)}")
        inc, exc = self.site_table[group]
        return match_paths(den, inc, exc)

    def module(self, pipe) -> nn.Module:
        return getattr(pipe, self.denoiser)

    # -- text ----------------------------------------------------------------------------------
    def encode(self, pipe, prompts, empty_is_uncond: bool = False, grad: bool = False,
               device=None) -> dict:
        dev = device or self.module(pipe).device
        return self.encoder(pipe, list(prompts), dev, empty_is_uncond=empty_is_uncond, grad=grad)

    # -- latents -------------------------------------------------------------------------------
    def pack(self, pipe, z):
        """(B, C, h, w) latents -> the layout the denoiser reads (FLUX packs 2x2 patches)."""
        return self.pack_fn(pipe, z)

    def unpack(self, pipe, z, height: int | None = None, width: int | None = None):
        return self.unpack_fn(pipe, z, height, width) if self.unpack_fn else z

    def size_multiple(self, pipe) -> int:
        vsf = getattr(pipe, "vae_scale_factor", 8)
        cfg = getattr(self.module(pipe), "config", None)
        patch = getattr(cfg, "patch_size", 1) or 1
        return vsf * max(patch, self.patch_factor)

    def prediction_type(self, pipe) -> str:
        """epsilon | v_prediction | sample | flow."""
        sched = pipe.scheduler
        if not hasattr(sched, "alphas_cumprod"):
            return "flow"
        return getattr(sched.config, "prediction_type", "epsilon")

    def native_size(self, pipe) -> int | None:
        """The size the model was configured for: denoiser sample_size x VAE scale factor (as
        diffusers computes its default), None when the config does not say."""
        cfg = getattr(self.module(pipe), "config", None)
        s = getattr(cfg, "sample_size", None)
        if isinstance(s, (list, tuple)):
            s = s[0]
        vsf = getattr(pipe, "vae_scale_factor", None)
        if not s or not vsf:
            return None
        return int(s) * int(vsf)

    def small_size(self, pipe) -> int:
        """The smallest image size every block of the denoiser accepts (fast static captures)."""
        vsf = getattr(pipe, "vae_scale_factor", 8)
        cfg = getattr(self.module(pipe), "config", None)
        blocks = getattr(cfg, "block_out_channels", None)
        down = 2 ** (len(blocks) - 1) if blocks else 2
        return max(vsf * down * 2, 32)

    def table(self, pipe) -> dict:
        """{group: [(path, weight shape), ...]} for every group."""
        den = self.module(pipe)
        out = {}
        for g in self.site_table:
            rows = []
            for p in self.sites(pipe, g):
                m = get_module(den, p)
                m = getattr(m, "base_layer", m)
                w = getattr(m, "weight", None)
                rows.append((p, tuple(w.shape) if w is not None else None))
            out[g] = rows
        return out


# Sampler data (Backbone.sampler):
#   cfg            "batch": [uncond; cond] in one batch, mixed by guidance; "embedded": guidance
#                  is a denoiser input (guidance_input, when its config has guidance_embeds) and
#                  CFG is opt-in true CFG
#   packed         latents are 2x2-packed tokens; the denoiser's in_channels / channel_div is the
#                  latent channel count
#   extras         family inputs of the denoiser (sampler_parts.EXTRAS): SDXL time ids, FLUX
#                  txt/img ids, PixArt resolution and aspect ratio
#   flow_sigmas    default sigmas passed to set_timesteps ("linspace": 1 .. 1/steps)
#   shift_mu       resolution-dependent shift: "always", "dynamic" (if the scheduler config has
#                  use_dynamic_shifting) or None; max_shift is the pipeline's default for it
#   one_step_x0    a 1-step run returns the x0 prediction
_SAMPLER_UNET = dict(cfg="batch", guidance_input=None, packed=False, channel_div=1, extras=None,
             flow_sigmas=None, shift_mu=None, max_shift=1.15, one_step_x0=False)
SAMPLER = {
    "sd1": _SAMPLER_UNET,
    "sd2": _SAMPLER_UNET,
    "sdxl": {**_SAMPLER_UNET, "extras": "sdxl_time_ids"},
    "sd3": {**_SAMPLER_UNET, "shift_mu": "dynamic", "max_shift": 1.16},
    "flux": {**_SAMPLER_UNET, "cfg": "embedded", "guidance_input": "guidance", "packed": True, "channel_div": 4,
             "extras": "flux_ids", "flow_sigmas": "linspace", "shift_mu": "always"},
    "pixart": {**_SAMPLER_UNET, "extras": "pixart_resolution", "one_step_x0": True},
}
_UNET = dict(denoiser="unet", site_table=_sites.UNET, positional_call=True)
_DIT = dict(denoiser="transformer", input_kwarg="hidden_states")
BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("sd1", "Stable Diffusion 1.x (UNet, epsilon)", text_kwargs=("encoder_hidden_states",),
             single_file=("StableDiffusionPipeline", "model.diffusion_model."), **_UNET),
    Backbone("sd2", "Stable Diffusion 2.x (UNet, v-prediction)", text_kwargs=("encoder_hidden_states",),
             size=768, single_file=("StableDiffusionPipeline", ""), **_UNET),
    Backbone("sdxl", "Stable Diffusion XL (UNet, two text encoders)",
             text_kwargs=("encoder_hidden_states", "added_cond_kwargs.text_embeds"),
             encoder=_text.encode_sdxl, size=1024, guidance=5.0,
             single_file=("StableDiffusionXLPipeline", "conditioner.embedders.1"), **_UNET),
    Backbone("sd3", "Stable Diffusion 3 (MMDiT, flow matching)", site_table=_sites.MMDIT,
             text_kwargs=("encoder_hidden_states", "pooled_projections"), encoder=_text.encode_sd3,
             size=1024, steps=28, guidance=7.0, segments=(("tokenizer", 0), ("tokenizer_3", 77)),
             text_reads_timestep=True, single_file=("StableDiffusion3Pipeline", "joint_blocks"),
             null_stream=("text_encoder_3", 256), **_DIT),
    Backbone("flux", "FLUX (MMDiT, flow matching, guidance-distilled)", site_table=_sites.MMDIT,
             text_kwargs=("encoder_hidden_states", "pooled_projections"), encoder=_text.encode_flux,
             shared_kwargs=("txt_ids", "img_ids"), timestep_scale=1000.0, size=1024, steps=28,
             guidance=3.5, segments=(("tokenizer_2", 0),), text_reads_timestep=True,
             packed_latents=True, patch_factor=2, pack_fn=_flux_pack, unpack_fn=_flux_unpack, **_DIT),
    Backbone("pixart", "PixArt (DiT with cross-attention, T5)", site_table=_sites.PIXART,
             text_kwargs=("encoder_hidden_states", "encoder_attention_mask"), encoder=_text.encode_pixart,
             learned_sigma=True, size=1024, steps=20, guidance=4.5,
             pipeline_kwargs=(("use_resolution_binning", False), ("clean_caption", False)), **_DIT),
)}
for _name, _data in SAMPLER.items():  # the native sampler's data, one row per backbone
    object.__setattr__(BACKBONES[_name], "sampler", _data)
# (pipeline class name prefix, family) in the order they are tried; SD 1/2 split on prediction type
_CLASS_PREFIXES = (("StableDiffusionXL", "sdxl"), ("StableDiffusion3", "sd3"), ("Flux", "flux"),
                   ("PixArt", "pixart"))
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown family {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def _detect(pipe) -> str:
    cls = type(pipe).__name__
    for prefix, fam in _CLASS_PREFIXES:
        if cls.startswith(prefix):
            return fam
    if cls.startswith("StableDiffusion") and getattr(pipe, "unet", None) is not None:
        pred = getattr(pipe.scheduler.config, "prediction_type", "epsilon")
        return "sd2" if pred == "v_prediction" else "sd1"
    raise ValueError(f"unsupported pipeline {cls}; concept_edit supports "
                     "StableDiffusion(XL/3), Flux and PixArt pipelines")


def backbone_of(pipe) -> Backbone:
    """The pipeline's backbone, detected once and cached (a Model handle is unwrapped)."""
    pipe = getattr(pipe, "pipe", pipe)
    try:
        return _CACHE[pipe]
    except (KeyError, TypeError):
        pass
    bb = BACKBONES[_detect(pipe)]
    try:
        _CACHE[pipe] = bb
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    return bb


def single_file_family(keys: list[str]) -> str | None:
    """The family of a single-file checkpoint from its tensor names (None if unknown)."""
    for name in ("sdxl", "sd3", "sd1"):
        prefix = BACKBONES[name].single_file[1]
        if any(k.startswith(prefix) or (name == "sd3" and prefix in k) for k in keys):
            return name
    return None


def single_file_class(family: str) -> str | None:
    bb = BACKBONES.get(family)
    return bb.single_file[0] if bb and bb.single_file else None


__all__ = ["Backbone", "BACKBONES", "SITE_GROUPS", "backbone_of", "get_backbone", "single_file_family",
           "single_file_class", "SiteError"]
