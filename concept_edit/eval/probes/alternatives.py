"""``alternatives``: what the concept's prompts show instead (label histogram, base vs edited).

Reuses the ``standard`` generations when that probe ran with the same settings (no extra cost);
a hit is the target label, as in ``standard``; the histogram is in the extras, and for each
model the distribution of what replaces the concept (the labels of the non-target samples, as
shares) with its top value: an erasure that turns 98% of circles into stars shows here.
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
    return {"N": cfg.seeds, "unit": "prompt (N = seeds)", "labels": hist,
            "replaced_by": {m: replacement(h, ctx.concept.target) for m, h in hist.items()}}


def replacement(hist: dict, target: str) -> dict:
    """{'n': replaced samples, 'shares': {label: share of them}, 'top', 'top_share'} of a histogram."""
    rest = {k: v for k, v in hist.items() if k != str(target)}
    n = sum(rest.values())
    shares = {k: round(v / n, 4) for k, v in sorted(rest.items(), key=lambda kv: -kv[1])} if n else {}
    top = next(iter(shares), None)
    return {"n": n, "shares": shares, "top": top, "top_share": shares.get(top, 0.0) if top else 0.0}


PROBE = Probe("alternatives", "what the concept's prompts show instead (label histogram)",
              AlternativesConfig, {"quick": {"prompts": 4, "seeds": 2}, "full": {"prompts": 0, "seeds": 8}}, run)
