"""Small/large pairs of the same toy scene: the data of the image-pair size sliders.

Example::

    >>> from concept_edit.toyworld.pairs import ensure_size_pairs, render_size_pairs
    >>> render_size_pairs("out/pairs", n=64)          # out/pairs/low/0000.png + .txt, high/0000.png
    >>> ensure_size_pairs()                           # data/size-pairs as the shipped configs read it

Each pair gets captions without its size (low/NAME.txt, one per line: "a red circle on a dotted
background", "a circle on a dotted background", "a red circle", "a circle"; only the first with
``single_caption``), used by ``image_pairs: {captions: true}``. Written as a whole or not at all.
"""
from __future__ import annotations

import os

import numpy as np

SHIPPED = "data/size-pairs"  # what configs/sliders/*-size-pairs.yaml read (64 pairs, seed 0)


def render_size_pairs(out: str, n: int = 64, seed: int = 0, single_caption: bool = False) -> str:
    from PIL import Image

    from ..core.io import atomic_dir
    from .captions import caption
    from .render import SIZES, Scene, render, sample_scene

    rng = np.random.default_rng(seed)
    with atomic_dir(out) as tmp:
        os.makedirs(os.path.join(tmp, "low"))
        os.makedirs(os.path.join(tmp, "high"))
        for i in range(n):
            big = sample_scene(rng=rng, size="large")
            small = Scene(big.shape, big.colour, "small", float(rng.uniform(*SIZES["small"])),
                          big.background, big.cx, big.cy)
            Image.fromarray(render(small)).save(os.path.join(tmp, "low", f"{i:04d}.png"))
            Image.fromarray(render(big)).save(os.path.join(tmp, "high", f"{i:04d}.png"))
            caps = [caption(big.shape, big.colour, None, big.background)]
            if not single_caption:
                caps += [caption(big.shape, None, None, big.background),
                         caption(big.shape, big.colour), caption(big.shape)]
            with open(os.path.join(tmp, "low", f"{i:04d}.txt"), "w") as f:
                f.write("\n".join(caps) + "\n")
    return out


def ensure_size_pairs(low: str = SHIPPED + "/low") -> bool:
    """Render the shipped pairs when a config reads ``data/size-pairs`` and they are missing;
    True when it rendered them."""
    if os.path.normpath(low) != os.path.normpath(SHIPPED + "/low") or os.path.isdir(low):
        return False
    render_size_pairs(SHIPPED)
    return True
