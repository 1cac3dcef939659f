"""Datasets of toy-world renders with exact labels.

Example::

    >>> from concept_edit.toyworld.dataset import build
    >>> ds = build(256, seed=0)
    >>> ds.images.shape, ds.shape[:4], ds.radius[:2]
    ((256, 64, 64, 3), array([...]), array([...]))

Labels are stored as integer indices into the vocabularies of ``render`` (SHAPES, COLOUR_NAMES,
SIZE_NAMES, BACKGROUNDS); ``shape == len(SHAPES)`` marks a bare background (no shape), used to
teach the classifier a "none" outcome.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from tqdm.auto import tqdm

from .render import BACKGROUNDS, COLOUR_NAMES, SHAPES, SIZE_NAMES, Scene, render, sample_scene

NONE = len(SHAPES)


@dataclasses.dataclass
class Dataset:
    images: np.ndarray  # (N, 64, 64, 3) uint8
    shape: np.ndarray   # (N,) int64, NONE for background only
    colour: np.ndarray
    size: np.ndarray
    background: np.ndarray
    radius: np.ndarray  # float32 px (0 for none)
    cx: np.ndarray
    cy: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def scene(self, i: int) -> Scene | None:
        if self.shape[i] == NONE:
            return None
        return Scene(SHAPES[self.shape[i]], COLOUR_NAMES[self.colour[i]], SIZE_NAMES[self.size[i]],
                     float(self.radius[i]), BACKGROUNDS[self.background[i]], float(self.cx[i]),
                     float(self.cy[i]))

    def save(self, path: str) -> None:
        np.savez(path, **dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str) -> "Dataset":
        with np.load(path, allow_pickle=False) as z:
            return cls(**{f.name: z[f.name] for f in dataclasses.fields(cls)})


def build(n: int, seed: int, p_none: float = 0.0, progress: bool = False, **fixed) -> Dataset:
    """Render ``n`` scenes drawn uniformly (or pinned by ``fixed``); ``p_none`` bare backgrounds."""
    rng = np.random.default_rng(seed)
    cols = {k: np.zeros(n, dtype=np.int64) for k in ("shape", "colour", "size", "background")}
    flt = {k: np.zeros(n, dtype=np.float32) for k in ("radius", "cx", "cy")}
    images = np.zeros((n, 64, 64, 3), dtype=np.uint8)
    for i in tqdm(range(n), desc="render", disable=not progress, leave=False):
        if p_none and rng.random() < p_none:
            bg = int(rng.integers(len(BACKGROUNDS)))
            images[i] = render(None, BACKGROUNDS[bg])
            cols["shape"][i] = NONE
            cols["background"][i] = bg
            continue
        s = sample_scene(rng=rng, **fixed)
        images[i] = render(s)
        cols["shape"][i] = SHAPES.index(s.shape)
        cols["colour"][i] = COLOUR_NAMES.index(s.colour)
        cols["size"][i] = SIZE_NAMES.index(s.size)
        cols["background"][i] = BACKGROUNDS.index(s.background)
        flt["radius"][i], flt["cx"][i], flt["cy"][i] = s.radius, s.cx, s.cy
    return Dataset(images=images, **cols, **flt)
