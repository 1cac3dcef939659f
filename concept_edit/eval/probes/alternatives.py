"""``alternatives``: what the concept's prompts show instead (label histogram, base vs edited).

Reuses the ``standard`` generations when that probe ran with the same settings (no extra cost);
a hit is the target label, as in ``standard``; the histogram is in the extras.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np

from ...core.config import StrictConfig
from ._base import Probe
from .standard import StandardConfig, units


@dataclasses.dataclass
class AlternativesConfig(StandardConfig, StrictConfig):
    pass


def run(ctx, cfg) -> dict:
    prompts, seeds, names = units(ctx, cfg)
    hist = {}
    for model in ("base", "edited"):
        rows = ctx.cached(model, prompts, seeds)
        ctx.record("alternatives", model, np.stack([r["image"] for r in rows]), prompts, seeds, names)
        labels = [r["label"] for r in ctx.records if r["model"] == model and r["probe"] == "alternatives"]
        hist[model] = dict(collections.Counter(str(x) for x in labels).most_common())
    return {"N": cfg.seeds, "unit": "prompt (N = seeds)", "labels": hist}


PROBE = Probe("alternatives", "what the concept's prompts show instead (label histogram)",
              AlternativesConfig, {"quick": {"prompts": 4, "seeds": 2}, "full": {"prompts": 0, "seeds": 8}}, run)
