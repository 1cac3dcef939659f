"""``completion``: the base model runs the first k steps, the edited model the rest (k swept).

The base trajectory is recorded once (x_t before every step, shared with ``standard``'s base
images); each k resumes it on the edited model with ``start_latents=states[k], start_step=k``
(DDIM eta = 0 is deterministic, so this is the same run as a two-phase sampling with the base
denoiser as the first phase, and a negative prompt applies to the edited part only). The base
reference is the base model throughout (the same image for every k). k = 0 is the standard probe.

Cost: one base run per prompt/seed + sum over k of (steps - k) edited steps.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ...core.config import ConfigError, StrictConfig, field
from ._base import Probe, pick


@dataclasses.dataclass
class CompletionConfig(StrictConfig):
    prompts: int = field(4, "concept prompts (spread over the list; 0 = all)")
    seeds: int = field(2, "seeds per prompt")
    ks: list[int] = field([2, 5], "base steps before the edited model takes over (the paper: 0, 1, 2 of 50)")

    def check(self) -> None:
        if not self.ks or any(k < 0 for k in self.ks):
            raise ConfigError(f"ks must be a non-empty list of steps >= 0, got {self.ks}")
        if self.prompts < 0 or self.seeds < 1:
            raise ConfigError("prompts must be >= 0 (0 = all) and seeds >= 1")


def run(ctx, cfg) -> dict:
    bad = [k for k in cfg.ks if k >= ctx.steps]
    if bad:
        raise ConfigError(f"completion ks {bad} must be below the model's {ctx.steps} steps")
    ps = pick(ctx.concept.prompt_list(), cfg.prompts)
    prompts = [p for p in ps for _ in range(cfg.seeds)]
    seeds = [s for _ in ps for s in ctx.seeds(cfg.seeds)]
    names = [f"p{ps.index(p)}/s{s}" for p, s in zip(prompts, seeds)]
    base = ctx.cached("base", prompts, seeds)
    ctx.record("completion", "base", np.stack([r["image"] for r in base]), prompts, seeds, names)
    for k in cfg.ks:
        if k == 0:
            imgs = np.stack([r["image"] for r in ctx.cached("edited", prompts, seeds)])
        else:
            states = torch.cat([r["states"][k] for r in base])
            imgs, _ = ctx.sample("edited", prompts, seeds,
                                 kwargs_for=lambda idx, k=k: {"start_latents": states[idx], "start_step": k})
        ctx.record("completion", "edited", imgs, prompts, seeds, names, setting={"k": k})
    return {"N": len(cfg.ks), "unit": "prompt/seed (N = values of k)"}


PROBE = Probe("completion", "base model for the first k steps, edited model for the rest",
              CompletionConfig, {"quick": {"prompts": 4, "seeds": 2, "ks": [2, 5]},
                                 "full": {"prompts": 0, "seeds": 4, "ks": [0, 1, 2, 3, 5, 8]}},
              run, sweep=("k",))
