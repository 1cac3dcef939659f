"""``standard``: the concept's prompts (templates x seeds) on the edited model and on the base.

Cost: prompts x seeds images per model (cached: inpaint, completion, inversion, attack,
guidance and alternatives reuse the same base generations).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ...core.config import ConfigError, StrictConfig, field
from ._base import Probe, pick


@dataclasses.dataclass
class StandardConfig(StrictConfig):
    prompts: int = field(4, "concept prompts used (spread over the list; 0 = all)")
    seeds: int = field(2, "seeds per prompt (best-of-N: N = seeds)")

    def check(self) -> None:
        if self.prompts < 0 or self.seeds < 1:
            raise ConfigError("prompts must be >= 0 (0 = all) and seeds >= 1")


def units(ctx, cfg):
    """(prompts, seeds, unit names) of the prompt x seed grid."""
    ps = pick(ctx.concept.prompt_list(), cfg.prompts)
    prompts = [p for p in ps for _ in range(cfg.seeds)]
    seeds = [s for _ in ps for s in ctx.seeds(cfg.seeds)]
    return prompts, seeds, [f"p{ps.index(p)}" for p in prompts]


def run(ctx, cfg) -> dict:
    prompts, seeds, names = units(ctx, cfg)
    for model in ("base", "edited"):
        rows = ctx.cached(model, prompts, seeds)
        ctx.record("standard", model, np.stack([r["image"] for r in rows]),
                   prompts, seeds, names)
    return {"N": cfg.seeds, "unit": "prompt (N = seeds)"}


PROBE = Probe("standard", "the concept's prompts x seeds", StandardConfig,
              {"quick": {"prompts": 4, "seeds": 2}, "full": {"prompts": 0, "seeds": 8}}, run)
