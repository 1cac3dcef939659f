"""Family names and site groups: a thin view of ``core.backbones`` (kept for existing callers).

Example::

    >>> from concept_edit.core.families import detect_family, resolve_sites
    >>> detect_family(pipe)                          # 'sd1', 'sd2', 'sdxl', 'sd3', 'flux' or 'pixart'
    >>> resolve_sites(pipe, "text_kv")[:1]
    ['down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k']

New code asks the backbone directly: ``backbone_of(pipe).sites(pipe, "text_kv")``.
"""
from __future__ import annotations

from torch import nn

from .backbones import BACKBONES, SITE_GROUPS, Backbone, backbone_of, get_backbone
from .paths import SiteError

Family = Backbone
FAMILIES = BACKBONES
get_family = get_backbone


def detect_family(pipe) -> str:
    """Family name of a loaded pipeline (cached per pipeline)."""
    return backbone_of(pipe).name


def denoiser_of(pipe) -> nn.Module:
    return backbone_of(pipe).module(pipe)


def resolve_sites(model_or_pipe, group: str, family: str | None = None) -> list[str]:
    """Module paths (relative to the denoiser) of a site group; SiteError if unknown or empty."""
    if isinstance(model_or_pipe, nn.Module):
        bb = get_backbone(family) if family else _module_backbone(model_or_pipe)
    else:
        bb = get_backbone(family) if family else backbone_of(model_or_pipe)
    return bb.sites(model_or_pipe, group)


def _module_backbone(module: nn.Module) -> Backbone:
    """A bare denoiser: UNets read the UNet table; transformers are told apart by their blocks."""
    names = {n.split(".")[0] for n, _ in module.named_children()}
    if "down_blocks" in names:
        return next(b for b in BACKBONES.values() if b.positional_call)
    if "adaln_single" in names:
        return next(b for b in BACKBONES.values() if b.learned_sigma)
    return next(b for b in BACKBONES.values() if b.text_reads_timestep)


def site_table(pipe) -> dict:
    """{group: [(path, weight shape), ...]} for every group of the pipeline's family."""
    return backbone_of(pipe).table(pipe)


__all__ = ["Family", "FAMILIES", "SITE_GROUPS", "SiteError", "detect_family", "get_family",
           "denoiser_of", "resolve_sites", "site_table"]
