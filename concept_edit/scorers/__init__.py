"""Attribute scorers by name: images (uint8 NHWC) -> one label per image.

Example::

    >>> from concept_edit.scorers import get_scorer, SCORERS
    >>> SCORERS.names()
    ['clip', 'nudenet', 'toy', 'toy-clip']
    >>> score = get_scorer("toy", attributes=["red", "blue"])       # the toy classifier
    >>> score = get_scorer("toy-clip", attributes=["red", "blue"])  # the toy CLIP, zero-shot
    >>> score = get_scorer("clip:ViT-B-32@/models/vit-b-32.safetensors", attributes=["male", "female"])
    >>> SCORERS.register("mine", lambda spec, attributes: my_fn)    # any callable from Python
    >>> emb = get_embedder("toy-clip")              # image embeddings (SliderSpace, diversity)
    >>> emb.embed(images), emb.embed_tensor(x)      # uint8 NHWC / differentiable [-1, 1] NCHW

A spec is ``NAME`` or ``NAME:ARGS``; the factory ``factory(spec, attributes) -> scorer`` is
imported only when its name is asked for, so no import registers anything.
"""
from __future__ import annotations

from ..core.plugins import Registry

SCORERS = Registry("scorer", {
    "toy": "concept_edit.scorers.toy:toy_scorer",
    "clip": "concept_edit.scorers.clip:clip_scorer",
    "toy-clip": "concept_edit.toyworld.clip:toy_clip_scorer",
    "nudenet": "concept_edit.scorers.nudenet:nudenet_scorer",   # optional extra (AGPL): [nudenet]
})


def get_scorer(spec: str, attributes: list[str]):
    """``'toy'``, ``'toy:DIR'`` or ``'clip:ARCH@WEIGHTS'`` (or a registered name) -> scorer."""
    if callable(spec):
        return spec
    return SCORERS.get(spec.split(":", 1)[0])(spec, attributes)


def get_embedder(spec: str = "toy-clip", device: str = "cpu"):
    """An image embedder: ``'toy-clip'``, ``'toy-clip:DIR'`` or ``'ARCH@WEIGHTS.safetensors'``
    (open_clip); see :mod:`concept_edit.scorers.embedders`."""
    from .embedders import get_embedder as _get

    return _get(spec, device)
