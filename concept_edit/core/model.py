"""The Model handle: a pipeline with its backbone, LoRA router, hooks, source and defaults.

Example::

    >>> from concept_edit.core.loading import load
    >>> from concept_edit.core.model import model_of
    >>> m = load()                                  # the embedded toy world (quiet)
    >>> m.backbone.name, m.source, m.defaults       # ('sd1', 'concept_edit:toy-world', {...})
    >>> m.pipe                                      # the plain diffusers pipeline
    >>> model_of(m.pipe) is m                       # functions given a pipeline find the handle
    True

Sampler defaults: ``concept_edit.json`` beside the model (also for a pipeline loaded with plain
``from_pretrained(DIR)``: its ``config._name_or_path``), else the model's own config (denoiser
sample size x VAE scale factor, as diffusers computes it), else the family table. No state is
kept on the diffusers pipeline object: handles live in a weak map keyed by the pipeline.
"""
from __future__ import annotations

import dataclasses
import json
import os
import weakref

from .backbones import Backbone, backbone_of

DEFAULTS_FILE = "concept_edit.json"  # sampler defaults (+ recommended method settings) beside a model
_HANDLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclasses.dataclass(eq=False)
class Model:
    pipe: object
    backbone: Backbone
    source: str = "unknown"                       # hub id / concept_edit:NAME / directory name
    defaults: dict = dataclasses.field(default_factory=dict)   # size, steps, guidance[, guidance_below]
    recommended: dict = dataclasses.field(default_factory=dict)  # method -> settings for this model
    world: str = ""                               # "toy": draws the toy world (concept_edit.json "world")

    @property
    def denoiser(self):
        return self.backbone.module(self.pipe)

    @property
    def router(self):
        from .lora import lora_router

        return lora_router(self.pipe)

    @property
    def hooks(self):
        from .hooks import hooks

        return hooks(self.denoiser)

    @property
    def device(self):
        return self.denoiser.device

    @property
    def toy_world(self) -> bool:
        """Whether the toy classifier can score this model's images: an embedded toy model, or
        any model directory whose concept_edit.json says ``"world": "toy"`` (what
        ``concept-edit toyworld train`` writes)."""
        from .embedded import TOY_MODELS

        return self.source in TOY_MODELS or self.world == "toy"

    def sites(self, group: str) -> list[str]:
        return self.backbone.sites(self.pipe, group)


def resolve_defaults(pipe, bb: Backbone, shipped: dict | None = None) -> dict:
    d = {"size": bb.size, "steps": bb.steps, "guidance": bb.guidance}
    native = bb.native_size(pipe)
    if native:
        d["size"] = native
    d.update({k: v for k, v in (shipped or {}).items() if k in ("size", "steps", "guidance", "guidance_below")})
    return d


def model_of(pipe, source: str | None = None, shipped: dict | None = None) -> Model:
    """The handle of a pipeline (made on first use for a pipeline built elsewhere)."""
    if isinstance(pipe, Model):
        return pipe
    m = _HANDLES.get(pipe)
    if m is None or source is not None or shipped is not None:
        bb = backbone_of(pipe)
        if shipped is None and m is None:   # loaded by plain diffusers: the directory it came from
            shipped = read_shipped(getattr(pipe.config, "_name_or_path", None))
        shipped = shipped or {}
        m = Model(pipe, bb, source or (m.source if m else "unknown"),
                  resolve_defaults(pipe, bb, shipped), dict(shipped.get("methods", {})),
                  str(shipped.get("world", "")))
        _HANDLES[pipe] = m
    return m


def read_shipped(model_dir: str | None) -> dict:
    """``concept_edit.json`` beside a model directory ({} when there is none)."""
    if not model_dir or not os.path.isdir(model_dir):
        return {}
    path = os.path.join(model_dir, DEFAULTS_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)
