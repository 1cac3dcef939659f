"""``guidance``: classifier guidance toward the concept by a small classifier on noisy latents.

The classifier (an MLP on the flattened noisy latent plus the level's (signal, noise)
coefficients) is trained with BCE on base-model latents: the concept's prompts (positive) vs
the neutral words' prompts (negative), noise levels biased to high noise. It is cached under
``.cache/audit/`` per base model, concept and settings. Sampling adds
``-noise_coef * scale * grad log p(concept | x_t)`` to the predicted noise (converted to the
denoiser's output space), on the edited model and, for reference, the base.

Cost: train_images x 2 base images (shared with other probes where they overlap) + the MLP
(seconds) + prompts x seeds x scales images per model.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import torch
from torch import nn

from ...core import schedule as S
from ...core.config import ConfigError, StrictConfig, field
from ...core.io import atomic_save_file, load_safetensors
from ._base import Probe, coefficients, level_of, output_coefficients, pick, sample_levels


@dataclasses.dataclass
class GuidanceConfig(StrictConfig):
    prompts: int = field(2, "concept prompts guided (0 = all)")
    seeds: int = field(2, "seeds per prompt")
    scales: list[float] = field([0.0, 30.0, 100.0], "guidance scales (the paper: 25..193 step 7 on SD 1.4)")
    train_images: int = field(16, "base latents per class (concept / neutral) for the classifier")
    train_steps: int = field(300, "classifier optimisation steps")
    hidden: int = field(256, "MLP width")
    lr: float = field(1e-3, "classifier learning rate")
    high_bias: float = field(2.0, "noise levels drawn as u ** (1 / high_bias): > 1 favours high noise")
    cache: bool = field(True, "reuse a classifier trained earlier for the same base, concept and settings")

    def check(self) -> None:
        if not self.scales:
            raise ConfigError("scales must be a non-empty list")
        if self.train_images < 2 or self.train_steps < 1 or self.hidden < 1:
            raise ConfigError("train_images >= 2, train_steps >= 1 and hidden >= 1 are needed")
        if self.prompts < 0 or self.seeds < 1:
            raise ConfigError("prompts must be >= 0 (0 = all) and seeds >= 1")


class LatentClassifier(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x_t: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x_t.flatten(1).float(), coef.float()], 1))[:, 0]


def _key(ctx, cfg, pos, neg, shape) -> str:
    from ...core.model import model_of

    from ...core.backbones import backbone_of

    probe = next(backbone_of(ctx.base).module(ctx.base).parameters())
    d = {"model": model_of(ctx.base).source, "w": float(probe.double().sum()), "pos": pos, "neg": neg,
         "shape": list(shape), "seed": ctx.seed,
         "cfg": {k: getattr(cfg, k) for k in ("train_images", "train_steps", "hidden", "lr", "high_bias")}}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def train_classifier(ctx, cfg) -> tuple[LatentClassifier, dict]:
    c = ctx.concept
    pos_p = pick(c.prompt_list(), cfg.train_images)
    neg_words = c.neutral or c.others
    if not neg_words:
        raise ConfigError("the guidance probe needs 'neutral' (or 'others') words in the concept for negatives")
    neg_all = [p for w in neg_words for p in c.prompt_list(w)]
    neg_p = pick(neg_all, cfg.train_images)
    per = max(1, -(-cfg.train_images // max(len(pos_p), 1)))
    pos = [(p, s) for p in pos_p for s in ctx.seeds(per)][:cfg.train_images]
    per = max(1, -(-cfg.train_images // max(len(neg_p), 1)))
    neg = [(p, s) for p in neg_p for s in ctx.seeds(per)][:cfg.train_images]
    sched = ctx.base.scheduler
    rows = ctx.cached("base", [p for p, _ in pos + neg], [s for _, s in pos + neg])
    x0 = torch.cat([r["latents"] for r in rows]).float()
    y = torch.tensor([1.0] * len(pos) + [0.0] * len(neg))
    key = _key(ctx, cfg, pos, neg, x0.shape[1:])
    path = os.path.join(ctx.cache_dir, f"guidance-{ctx.concept.name}-{key}.safetensors")
    clf = LatentClassifier(int(np.prod(x0.shape[1:])), cfg.hidden)
    if cfg.cache and os.path.exists(path):
        clf.load_state_dict(load_safetensors(path))
        return clf.eval(), {"cached": True, "path": path}
    g = torch.Generator().manual_seed(ctx.seed + 4242)
    opt = torch.optim.Adam(clf.parameters(), lr=cfg.lr)
    losses = []
    with torch.enable_grad():
        for step in range(cfg.train_steps):
            idx = torch.randint(0, len(x0), (min(64, 4 * len(x0)),), generator=g)
            lvl = sample_levels(sched, len(idx), g, cfg.high_bias)
            noise = torch.randn(x0[idx].shape, generator=g)
            xt = S.noisy(sched, x0[idx], noise, lvl)
            coef = torch.tensor([coefficients(sched, v) for v in lvl.tolist()])
            loss = nn.functional.binary_cross_entropy_with_logits(clf(xt, coef), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    clf.eval()
    # held-out check: accuracy on fresh noise at mid/high levels
    with torch.no_grad():
        lv = sample_levels(sched, len(x0), g, cfg.high_bias)
        xt = S.noisy(sched, x0, torch.randn(x0.shape, generator=g), lv)
        coef = torch.tensor([coefficients(sched, v) for v in lv.tolist()])
        acc = float(((clf(xt, coef) > 0).float() == y).float().mean())
    if cfg.cache:
        os.makedirs(ctx.cache_dir, exist_ok=True)
        atomic_save_file({k: v.detach().contiguous() for k, v in clf.state_dict().items()}, path)
    return clf, {"cached": False, "path": path, "loss_first": losses[0], "loss_last": float(np.mean(losses[-20:])),
                 "train_accuracy_noisy": acc}


def guidance_fn(sched, clf: LatentClassifier, scale: float):
    if scale == 0:
        return None

    def fn(x, t, x0, pred):
        lvl = level_of(sched, t)
        xt = (x.detach() / S.state_scale(sched, lvl).to(x)).float().requires_grad_(True)
        sig, noi = coefficients(sched, lvl)
        coef = torch.tensor([[sig, noi]]).expand(xt.shape[0], 2)
        logp = nn.functional.logsigmoid(clf(xt, coef)).sum()
        grad, = torch.autograd.grad(logp, xt)
        _, ce = output_coefficients(sched, lvl)
        return (-noi * scale * grad / ce).to(pred.dtype)

    return fn


def run(ctx, cfg) -> dict:
    clf, info = train_classifier(ctx, cfg)
    ps = pick(ctx.concept.prompt_list(), cfg.prompts)
    prompts = [p for p in ps for _ in range(cfg.seeds)]
    seeds = [s for _ in ps for s in ctx.seeds(cfg.seeds)]
    names = [f"p{ps.index(p)}/s{s}" for p, s in zip(prompts, seeds)]
    for model in ("base", "edited"):
        for sc in cfg.scales:
            fn = guidance_fn(ctx.pipe(model).scheduler, clf, sc)
            imgs, _ = ctx.sample(model, prompts, seeds, guidance_fn=fn)
            ctx.record("guidance", model, imgs, prompts, seeds, names, setting={"scale": sc})
    return {"N": len(cfg.scales), "unit": "prompt/seed (N = scales)", "classifier": info}


PROBE = Probe("guidance", "classifier guidance by a latent classifier trained on base latents", GuidanceConfig,
              {"quick": {"prompts": 2, "seeds": 2, "scales": [0.0, 30.0, 100.0], "train_images": 16,
                         "train_steps": 300},
               "full": {"prompts": 4, "seeds": 4, "scales": [0.0, 25.0, 60.0, 100.0, 150.0, 193.0],
                        "train_images": 48, "train_steps": 800}},
              run, sweep=("scale",))
