"""``interference``: other concepts' prompts on the edited model; a hit is the other concept's
own label still shown ('kept'); ``leak`` (the erased concept shown instead) is in the extras.

Cost: len(others) x prompts x seeds images per model.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ...core.config import ConfigError, StrictConfig, field
from ._base import Probe, ProbeSkipped, pick


@dataclasses.dataclass
class InterferenceConfig(StrictConfig):
    prompts: int = field(2, "prompts per other concept (templates spread over the list; 0 = all)")
    seeds: int = field(2, "seeds per prompt")

    def check(self) -> None:
        if self.prompts < 0 or self.seeds < 1:
            raise ConfigError("prompts must be >= 0 (0 = all) and seeds >= 1")


def run(ctx, cfg) -> dict:
    c = ctx.concept
    if not c.others:
        raise ProbeSkipped("the concept names no 'others' (other concepts to keep)")
    prompts, seeds, names, expected = [], [], [], []
    for o in c.others:
        for p in pick(c.prompt_list(o), cfg.prompts):
            for s in ctx.seeds(cfg.seeds):
                prompts.append(p)
                seeds.append(s)
                names.append(f"{o}:{p}")
                expected.append(o)
    leak = {}
    for model in ("base", "edited"):
        rows = ctx.cached(model, prompts, seeds)
        ctx.record("interference", model, np.stack([r["image"] for r in rows]), prompts, seeds, names,
                   expected=expected)
        recs = [r for r in ctx.records if r["probe"] == "interference" and r["model"] == model]
        leak[model] = float(np.mean([r["label"] == c.target_label for r in recs]))
    return {"N": cfg.seeds, "unit": "prompt of another concept (N = seeds)", "leak": leak,
            "others": list(c.others)}


PROBE = Probe("interference", "other concepts' prompts: are they kept?", InterferenceConfig,
              {"quick": {"prompts": 2, "seeds": 2}, "full": {"prompts": 4, "seeds": 8}}, run, metric="kept")
