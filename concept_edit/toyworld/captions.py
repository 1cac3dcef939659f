"""Caption grammar of the toy world (v1).

Example::

    >>> from concept_edit.toyworld.captions import caption, all_prompts
    >>> caption(shape="circle", colour="red")          # 'a red circle'
    >>> len(all_prompts())                              # 240 prompts: every subset of attributes

Full form ``a {size} {colour} {shape} on a {background} background``; size, colour and the
background phrase are each dropped independently with probability ``p_drop`` and about
``p_empty`` of captions are empty (for classifier-free guidance).
"""
from __future__ import annotations

import itertools
import re

import numpy as np

from .render import BACKGROUNDS, COLOUR_NAMES, SHAPES, SIZE_NAMES, Scene

P_DROP = 0.2
P_EMPTY = 0.1


def caption(shape: str, colour: str | None = None, size: str | None = None,
            background: str | None = None) -> str:
    words = ["a"] + [w for w in (size, colour) if w] + [shape]
    if background:
        words += ["on", "a", background, "background"]
    return " ".join(words)


def sample_caption(scene: Scene, rng: np.random.Generator, p_drop: float | tuple = P_DROP,
                   p_empty: float = P_EMPTY) -> str:
    """A caption of ``scene`` with attribute dropout; '' with probability ``p_empty``.

    ``p_drop``: one probability, or (size, colour, background) probabilities."""
    if rng.random() < p_empty:
        return ""
    keep = rng.random(3) >= np.asarray(p_drop, dtype=float)
    return caption(scene.shape, scene.colour if keep[1] else None,
                   scene.size if keep[0] else None, scene.background if keep[2] else None)


def all_prompts() -> list[dict]:
    """Every non-empty prompt of the v1 grammar with the attributes it names."""
    out = []
    for size, colour, shape, bg in itertools.product(
            (None,) + SIZE_NAMES, (None,) + COLOUR_NAMES, SHAPES, (None,) + BACKGROUNDS):
        named = {"shape": shape}
        if size:
            named["size"] = size
        if colour:
            named["colour"] = colour
        if bg:
            named["background"] = bg
        out.append({"prompt": caption(shape, colour, size, bg), "named": named})
    return out


_PATTERN = re.compile(
    r"^a (?:(?P<size>%s) )?(?:(?P<colour>%s) )?(?P<shape>%s)(?: on a (?P<background>%s) background)?$"
    % ("|".join(SIZE_NAMES), "|".join(COLOUR_NAMES), "|".join(SHAPES), "|".join(BACKGROUNDS)))


def parse(prompt: str) -> dict:
    """The attributes a v1 prompt names; raises ValueError for text outside the grammar."""
    m = _PATTERN.match(prompt.strip())
    if not m:
        raise ValueError(f"{prompt!r} is not a v1 toy-world prompt; write e.g. 'a red circle on a plain background'")
    return {k: v for k, v in m.groupdict().items() if v}
