"""x0-hat ("diffusion target") trajectories of the base, the distilled model and the hybrid.

Example::

    >>> from concept_edit.methods.distill.trajectory import trajectories
    >>> tr = trajectories(base, turbo, "a circle", seeds=[0, 1], switch=1, timesteps=[999, 749, 499, 249])
    >>> tr["hybrid"]["x0"].shape          # (steps, seeds, H, W, 3) floats in [0, 1]
    >>> tr["hybrid"]["timesteps"], tr["hybrid"]["models"], tr["hybrid"]["images"]

``base`` runs on the shared schedule (the hybrid's run with every step on the base) unless
``base_steps`` is given, then on its own grid of that many steps. With DDIM at eta 0 and
``set_alpha_to_one=True`` the last x0-hat is the final image (the last step lands on a_prev = 1).
"""
from __future__ import annotations

import numpy as np

from ...core.sampler import sample
from .hybrid import decode_x0, hybrid_sample, run_schedule

__all__ = ["trajectories"]


def _pack(pipe, res, models) -> dict:
    return {"x0": decode_x0(pipe, res), "images": res.images,
            "timesteps": [float(t) for t in res.timesteps], "models": list(models)}


def trajectories(base, distilled, prompt: str, seeds=(0, 1), switch: int = 1, steps: int | None = None,
                 timesteps=None, base_steps: int | None = None, base_guidance: float | None = None,
                 distilled_guidance: float | None = None, mode: str = "shared",
                 progress: bool = False) -> dict:
    """{'base' | 'distilled' | 'hybrid': {'x0': (steps, N, H, W, 3), 'images', 'timesteps',
    'models'}} for ``prompt`` with image i from ``seeds[i]``."""
    seeds = list(seeds)
    prompts = [prompt] * len(seeds)
    kw = dict(seed=seeds, steps=steps, timesteps=timesteps, base_guidance=base_guidance,
              distilled_guidance=distilled_guidance, return_x0=True, progress=progress)
    n = len(run_schedule(distilled, steps, timesteps)[0])
    out = {}
    if base_steps is None:
        r = hybrid_sample(base, distilled, prompts, switch=n, allow_pure=True, **kw)
    else:
        from ...core.model import model_of

        g = model_of(base).defaults["guidance"] if base_guidance is None else base_guidance
        r = sample(base, prompts, seed=seeds, steps=base_steps, guidance=g, return_x0=True, progress=progress)
        r.models = ["base"] * len(r.timesteps)
    out["base"] = _pack(base, r, getattr(r, "models", []))
    r = hybrid_sample(base, distilled, prompts, switch=0, allow_pure=True, **kw)
    out["distilled"] = _pack(distilled, r, r.models)
    r = hybrid_sample(base, distilled, prompts, switch=switch, mode=mode,
                      base_steps=base_steps if mode == "two" else None, **kw)
    out["hybrid"] = _pack(distilled, r, r.models)
    return out


def strip_tiles(tr: dict) -> tuple[list, list[str], list[str]]:
    """(tiles[row][col] uint8, column labels, row labels): seeds in rows, one row per model and
    seed, the final image in the last column; for ``eval.grid.labelled_grid``."""
    rows, names = [], []
    width = max(v["x0"].shape[0] for v in tr.values())
    for name, v in tr.items():
        for s in range(v["x0"].shape[1]):
            tiles = [(np.clip(v["x0"][i, s], 0, 1) * 255).round().astype(np.uint8)
                     for i in range(v["x0"].shape[0])]
            blank = np.full_like(tiles[0], 255)
            tiles += [blank] * (width - len(tiles))
            tiles.append((np.clip(v["images"][s], 0, 1) * 255).round().astype(np.uint8))
            rows.append(tiles)
            names.append(f"{name} {s}")
    cols = [f"x0 step {i}" for i in range(width)] + ["final"]
    return rows, cols, names
