"""``inversion``: textual inversion on the edited model against base-model images of the concept.

A placeholder token's input embedding (in every text encoder) is optimised with the diffusion
loss of the edited model on base latents of the concept's prompts (prompts: the concept's
templates with the placeholder in place of the word), initialised from ``init_word``; then the
edited model generates the templates with the learned token. The base reference generates the
same prompts with the same learned embedding on the base model. The loss is reported on a fixed
held-out set of (image, level, noise) before and after.

Cost: steps x batch denoiser forward+backward passes + prompts x seeds images per model.
The paper: diffusers TI, init "object", 3000 steps, lr 5e-4 (scaled), accumulation 4.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ...core.backbones import backbone_of
from ...core.config import ConfigError, StrictConfig, field
from ._base import Probe, ProbeSkipped, TokenPatch, diffusion_loss, pick, sample_levels


@dataclasses.dataclass
class InversionConfig(StrictConfig):
    images: int = field(8, "base images of the concept to invert")
    steps: int = field(60, "optimisation steps")
    batch: int = field(4, "images per step")
    lr: float = field(5e-3, "Adam learning rate of the embedding")
    init_word: str = field("object", "initial embedding: this word's ('' = random)")
    eval_samples: int = field(8, "fixed (image, level, noise) triples of the reported loss")
    prompts: int = field(2, "templates generated with the learned token (0 = all)")
    seeds: int = field(2, "seeds per prompt")

    def check(self) -> None:
        if min(self.images, self.batch, self.eval_samples, self.seeds) < 1 or self.steps < 0:
            raise ConfigError("images, batch, eval_samples and seeds must be >= 1, steps >= 0")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


def _train_data(ctx, cfg):
    ps = pick(ctx.concept.prompt_list(), cfg.images)
    per = max(1, -(-cfg.images // len(ps)))
    pairs = [(p, s) for p in ps for s in ctx.seeds(per)][:cfg.images]
    rows = ctx.cached("base", [p for p, _ in pairs], [s for _, s in pairs])
    return torch.cat([r["latents"] for r in rows]).float()


def invert(pipe, x0: torch.Tensor, prompts: list[str], patch: TokenPatch, cfg, size: int, seed: int):
    """Optimise the placeholder's vectors; returns (vectors, losses, eval_before, eval_after)."""
    sched = pipe.scheduler
    bb = backbone_of(pipe)
    g = torch.Generator().manual_seed(seed + 99)
    if cfg.init_word:
        init = patch.word_vector(cfg.init_word)
    else:
        init = [torch.randn(E.shape[1], generator=g) * E.detach().float().std() for E in patch.embeddings()]
    vecs = [v.clone().requires_grad_(True) for v in init]
    opt = torch.optim.Adam(vecs, lr=cfg.lr)
    ev_idx = torch.arange(cfg.eval_samples) % len(x0)
    ev_lvl = sample_levels(sched, cfg.eval_samples, g)
    ev_noise = torch.randn((cfg.eval_samples,) + tuple(x0.shape[1:]), generator=g)
    ev_prompts = [prompts[i % len(prompts)] for i in range(cfg.eval_samples)]

    def eval_loss():
        with torch.no_grad(), patch.active([v.detach() for v in vecs]):
            cond = bb.encode(pipe, ev_prompts)
            return float(diffusion_loss(pipe, x0[ev_idx], cond, ev_lvl, ev_noise, size).mean())

    before = eval_loss()
    losses = []
    with torch.enable_grad():
        for step in range(cfg.steps):
            idx = torch.randint(0, len(x0), (cfg.batch,), generator=g)
            lvl = sample_levels(sched, cfg.batch, g)
            noise = torch.randn((cfg.batch,) + tuple(x0.shape[1:]), generator=g)
            pr = [prompts[int(i) % len(prompts)] for i in idx]
            with patch.active(vecs):
                cond = bb.encode(pipe, pr, grad=True)
            loss = diffusion_loss(pipe, x0[idx], cond, lvl, noise, size).mean()
            if not loss.requires_grad:
                raise ProbeSkipped("this model's prompt encoding gives the placeholder no gradient")
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return [v.detach() for v in vecs], losses, before, eval_loss()


def run(ctx, cfg) -> dict:
    c = ctx.concept
    patch = TokenPatch(ctx.edited)
    x0 = _train_data(ctx, cfg)
    train_prompts = c.prompt_list(patch.word)
    vecs, losses, before, after = invert(ctx.edited, x0, train_prompts, patch, cfg, ctx.size, ctx.seed)
    ps = pick(train_prompts, cfg.prompts)
    prompts = [p for p in ps for _ in range(cfg.seeds)]
    seeds = [s for _ in ps for s in ctx.seeds(cfg.seeds)]
    names = [f"p{ps.index(p)}" for p in prompts]
    for model in ("base", "edited"):
        p = patch if model == "edited" else TokenPatch(ctx.base)
        with p.active(vecs):
            imgs, _ = ctx.sample(model, prompts, seeds)
        ctx.record("inversion", model, imgs, prompts, seeds, names)
    return {"N": cfg.seeds, "unit": "template with the learned token (N = seeds)", "placeholder": patch.word,
            "loss_eval_before": before, "loss_eval_after": after,
            "loss_curve": [round(float(np.mean(losses[i:i + 10])), 5) for i in range(0, len(losses), 10)]}


PROBE = Probe("inversion", "textual inversion of a new token on the edited model vs base images",
              InversionConfig,
              {"quick": {"images": 8, "steps": 60, "batch": 4, "prompts": 2, "seeds": 2},
               "full": {"images": 16, "steps": 400, "batch": 4, "prompts": 4, "seeds": 4}}, run)
