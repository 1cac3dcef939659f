"""``noise``: DDIM with eta > 1 and the injected noise scaled (sweep: etas x noise scales).

The sampler's DDIM step clamps ``1 - a_prev - sigma^2`` at 0, so eta > 1 gives no NaN. The noise
scale s multiplies the standard deviation of the noise each step injects: the probe adds the
missing ``sigma sqrt(s^2 - 1) z`` (z from its own seeded generators) through the sampler's
``guidance_fn``, as the output change that moves x_prev by exactly that amount (the step is
affine in the denoiser output; coefficients from ``core.schedule``). s >= 1 only.
The paper's grid: etas 1.0-1.85 (6) x scales 1.00-1.04 (4), best of the 24 per prompt/seed.

Cost: prompts x seeds x etas x scales images per model. DDIM schedulers only.
"""
from __future__ import annotations

import dataclasses

import torch

from ...core import schedule as S
from ...core.config import ConfigError, StrictConfig, field
from ._base import Probe, ProbeSkipped, output_coefficients, pick


@dataclasses.dataclass
class NoiseConfig(StrictConfig):
    prompts: int = field(2, "concept prompts (spread over the list; 0 = all)")
    seeds: int = field(2, "seeds per prompt")
    etas: list[float] = field([1.0, 1.85], "DDIM etas (> 1: more noise than DDPM)")
    scales: list[float] = field([1.0, 1.04], "noise standard deviation factors (>= 1)")

    def check(self) -> None:
        if not self.etas or any(e < 0 for e in self.etas):
            raise ConfigError(f"etas must be a non-empty list of values >= 0, got {self.etas}")
        if not self.scales or any(s < 1 for s in self.scales):
            raise ConfigError(f"scales must be a non-empty list of values >= 1, got {self.scales}")
        if self.prompts < 0 or self.seeds < 1:
            raise ConfigError("prompts must be >= 0 (0 = all) and seeds >= 1")


def _a_prev(sched, t):
    prev = int(t) - sched.config.num_train_timesteps // sched.num_inference_steps
    return S.alpha_bar(sched, prev) if prev >= 0 else sched.final_alpha_cumprod.float().cpu()


def extra_noise_fn(sched, eta: float, scale: float, seeds: list[int]):
    """guidance_fn adding ``sigma sqrt(scale^2 - 1) z`` to each DDIM step's x_prev."""
    if scale <= 1.0 or eta <= 0:
        return None
    gens = [torch.Generator().manual_seed(1_000_003 * (s + 1) + 7) for s in seeds]

    def fn(x, t, x0, pred):
        a_t, a_prev = S.alpha_bar(sched, t), _a_prev(sched, t)
        var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = float(eta * var.sqrt())
        direction = float((1 - a_prev - std ** 2).clamp(min=0).sqrt())
        cx, ce = output_coefficients(sched, t)
        b = float(a_prev.sqrt()) * cx + direction * ce   # d x_prev / d output
        z = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x)
        if abs(b) < 1e-8:
            return torch.zeros_like(pred)
        return (std * (scale ** 2 - 1) ** 0.5 / b) * z.to(pred.dtype)

    return fn


def run(ctx, cfg) -> dict:
    sched = ctx.edited.scheduler
    if type(sched).__name__ != "DDIMScheduler" or type(ctx.base.scheduler).__name__ != "DDIMScheduler":
        raise ProbeSkipped(f"the noise probe needs a DDIM scheduler; this model has {type(sched).__name__} "
                           "(swap in diffusers' DDIMScheduler.from_config to audit it)")
    ps = pick(ctx.concept.prompt_list(), cfg.prompts)
    prompts = [p for p in ps for _ in range(cfg.seeds)]
    seeds = [s for _ in ps for s in ctx.seeds(cfg.seeds)]
    names = [f"p{ps.index(p)}/s{s}" for p, s in zip(prompts, seeds)]
    nan = 0
    for model in ("base", "edited"):
        for eta in cfg.etas:
            for sc in cfg.scales:
                def kw(idx, eta=eta, sc=sc, model=model):
                    fn = extra_noise_fn(ctx.pipe(model).scheduler, eta, sc, [seeds[i] for i in idx])
                    return {"eta": eta, "guidance_fn": fn}
                imgs, results = ctx.sample(model, prompts, seeds, kwargs_for=kw)
                nan += sum(int((~torch.isfinite(r.latents)).sum()) for r in results)
                ctx.record("noise", model, imgs, prompts, seeds, names, setting={"eta": eta, "scale": sc})
    return {"N": len(cfg.etas) * len(cfg.scales), "unit": "prompt/seed (N = etas x scales)",
            "non_finite_latents": nan}


PROBE = Probe("noise", "DDIM eta > 1 with scaled noise (etas x scales)", NoiseConfig,
              {"quick": {"prompts": 2, "seeds": 2, "etas": [1.0, 1.85], "scales": [1.0, 1.04]},
               "full": {"prompts": 4, "seeds": 2, "etas": [1.0, 1.17, 1.34, 1.51, 1.68, 1.85],
                        "scales": [1.0, 1.013, 1.027, 1.04]}},
              run, sweep=("eta", "scale"))
