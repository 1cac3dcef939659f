"""Labelled image grids: tiles upscaled for viewing, column and row captions.

Example::

    >>> from concept_edit.eval.grid import labelled_grid
    >>> g = labelled_grid([[a0, a1], [b0, b1]], cols=["scale -2", "scale 2"], rows=["seed 0", "seed 1"])
    >>> Image.fromarray(g).save("grid.png")
"""
from __future__ import annotations

import numpy as np


def labelled_grid(tiles: list[list[np.ndarray]], cols: list[str] = (), rows: list[str] = (),
                  tile: int = 128, title: str | None = None, pad: int = 4) -> np.ndarray:
    """``tiles[r][c]`` (H, W, 3) uint8 -> one RGB image with captions (nearest-neighbour upscale,
    so toy pixels stay crisp)."""
    from PIL import Image, ImageDraw

    n_r, n_c = len(tiles), max(len(r) for r in tiles)
    left = 64 if rows else 0
    top = (18 if cols else 0) + (18 if title else 0)
    W = left + n_c * (tile + pad) + pad
    H = top + n_r * (tile + pad) + pad
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 3), title, fill=(0, 0, 0))
    y0 = 18 if title else 0
    for c, label in enumerate(cols):
        draw.text((left + pad + c * (tile + pad) + 4, y0 + 3), str(label), fill=(0, 0, 0))
    for r, row in enumerate(tiles):
        y = top + pad + r * (tile + pad)
        if r < len(rows):
            draw.text((4, y + tile // 2 - 6), str(rows[r]), fill=(0, 0, 0))
        for c, img in enumerate(row):
            im = Image.fromarray(np.asarray(img, dtype=np.uint8))
            canvas.paste(im.resize((tile, tile), Image.NEAREST), (left + pad + c * (tile + pad), y))
    return np.asarray(canvas)
