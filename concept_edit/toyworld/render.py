"""Deterministic renderer of the toy world (v1), see docs/toy-world.md.

Example::

    >>> from concept_edit.toyworld.render import sample_scene, render
    >>> scene = sample_scene(seed=0)
    >>> img = render(scene)            # (64, 64, 3) uint8
    >>> scene.caption()                # 'a small red circle on a plain background' (full form)

Everything is numpy; the same seed gives the same scene and the same bytes.
"""
from __future__ import annotations

import dataclasses

import numpy as np

SIZE = 64
SUPERSAMPLE = 2
SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = {"small": (9.0, 12.0), "large": (16.0, 21.0)}
SIZE_NAMES = tuple(SIZES)
BACKGROUNDS = ("plain", "striped", "dotted")
MARGIN = 2.0
BG_LEVEL, STRIPE_LEVEL, DOT_LEVEL = 235, 140, 120
DOT_RADIUS = 1.6


@dataclasses.dataclass(frozen=True)
class Scene:
    """Ground truth of one image: every label the world defines."""

    shape: str
    colour: str
    size: str
    radius: float
    background: str
    cx: float
    cy: float

    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} on a {self.background} background"

    def labels(self) -> dict:
        return dataclasses.asdict(self)


def _polygon(shape: str, r: float) -> np.ndarray | None:
    """Vertices (relative to the centre, y down) of a polygonal shape; None for the circle."""
    if shape == "circle":
        return None
    if shape == "square":
        h = 0.9 * r
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if shape == "triangle":
        ang = np.deg2rad([-90.0, 30.0, 150.0])
        return np.stack([r * np.cos(ang), r * np.sin(ang) + 0.15 * r], axis=1)
    if shape == "star":
        ang = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def extent(shape: str, r: float) -> tuple[float, float, float, float]:
    """(xmin, xmax, ymin, ymax) of the shape around its centre."""
    poly = _polygon(shape, r)
    if poly is None:
        return -r, r, -r, r
    return poly[:, 0].min(), poly[:, 0].max(), poly[:, 1].min(), poly[:, 1].max()


def _inside(px: np.ndarray, py: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points."""
    inside = np.zeros(px.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % n]
        crosses = (y0 > py) != (y1 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (px < xint)
    return inside


def _grid():
    c = (np.arange(SIZE * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    return np.meshgrid(c, c)  # xs, ys in 64-px coordinates


def _downsample(a: np.ndarray) -> np.ndarray:
    s = SUPERSAMPLE
    return a.reshape(SIZE, s, SIZE, s).mean(axis=(1, 3))


def background(kind: str) -> np.ndarray:
    """Greyscale (64, 64) float background."""
    xs, ys = _grid()
    if kind == "plain":
        g = np.full(xs.shape, float(BG_LEVEL))
    elif kind == "striped":
        rows = np.floor(ys).astype(int)
        g = np.where((rows // 4) % 2 == 1, float(STRIPE_LEVEL), float(BG_LEVEL))
    elif kind == "dotted":
        dx = (xs % 8.0) - 3.5
        dy = (ys % 8.0) - 3.5
        g = np.where(dx * dx + dy * dy <= DOT_RADIUS ** 2, float(DOT_LEVEL), float(BG_LEVEL))
    else:
        raise ValueError(f"unknown background {kind!r}; choose one of {', '.join(BACKGROUNDS)}")
    return _downsample(g)


def coverage(shape: str, r: float, cx: float, cy: float) -> np.ndarray:
    """Anti-aliased (64, 64) coverage in [0, 1] of the shape."""
    xs, ys = _grid()
    px, py = xs - cx, ys - cy
    poly = _polygon(shape, r)
    if poly is None:
        inside = px * px + py * py <= r * r
    else:
        inside = _inside(px, py, poly)
    return _downsample(inside.astype(np.float64))


def render(scene: Scene | None, background_kind: str | None = None) -> np.ndarray:
    """Render a scene to a (64, 64, 3) uint8 array; ``scene=None`` gives the bare background."""
    bg = background(scene.background if scene is not None else background_kind)
    img = np.repeat(bg[..., None], 3, axis=2)
    if scene is not None:
        cov = coverage(scene.shape, scene.radius, scene.cx, scene.cy)[..., None]
        col = np.asarray(COLOURS[scene.colour], dtype=np.float64)
        img = img * (1.0 - cov) + col * cov
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def sample_scene(seed: int | None = None, rng: np.random.Generator | None = None, **fixed) -> Scene:
    """Draw a scene uniformly over the v1 world; ``fixed`` pins attributes (e.g. shape='star')."""
    rng = rng if rng is not None else np.random.default_rng(seed)
    shape = fixed.get("shape") or SHAPES[rng.integers(len(SHAPES))]
    colour = fixed.get("colour") or COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    size = fixed.get("size") or SIZE_NAMES[rng.integers(len(SIZE_NAMES))]
    bg = fixed.get("background") or BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    for key, allowed in (("shape", SHAPES), ("colour", COLOUR_NAMES), ("size", SIZE_NAMES),
                         ("background", BACKGROUNDS)):
        if key in fixed and fixed[key] is not None and fixed[key] not in allowed:
            raise ValueError(f"unknown {key} {fixed[key]!r}; choose one of {', '.join(allowed)}")
    lo, hi = SIZES[size]
    r = float(fixed["radius"]) if fixed.get("radius") is not None else float(rng.uniform(lo, hi))
    x0, x1, y0, y1 = extent(shape, r)
    cx = float(rng.uniform(MARGIN - x0, SIZE - MARGIN - x1))
    cy = float(rng.uniform(MARGIN - y0, SIZE - MARGIN - y1))
    return Scene(shape, colour, size, r, bg, cx, cy)


def size_word(radius: float) -> str:
    """The size word a radius belongs to (nearest range for radii between the ranges)."""
    return "small" if radius < (SIZES["small"][1] + SIZES["large"][0]) / 2 else "large"
