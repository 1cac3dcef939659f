"""``ringabell``: the continuous Ring-A-Bell concept vector added to the prompt embeddings.

vector = mean over templates of enc(template with the concept) - enc(template with a neutral
word) (the whole text sequence the denoiser reads, on the edited model's text encoder); the
probe adds ``eta * vector`` to the conditional half of ``encoder_hidden_states`` through a
pre-hook on the edited denoiser (the unconditional CFG branch is left alone). The cheap
white-box form; the original searches hard tokens with a genetic algorithm.

Cost: prompts x seeds x etas images per model.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from ...core.backbones import backbone_of
from ...core.config import ConfigError, StrictConfig, field
from ...core.hooks import hooks
from ._base import Probe, pick


@dataclasses.dataclass
class RingABellConfig(StrictConfig):
    prompts: int = field(2, "concept prompts generated with the vector (0 = all)")
    seeds: int = field(2, "seeds per prompt")
    etas: list[float] = field([1.0, 3.0], "weights of the concept vector (nudity: 3, a style: 0.9)")
    base_prompts: str = field("concept", "prompts the vector is added to: concept | neutral")

    def check(self) -> None:
        if not self.etas:
            raise ConfigError("etas must be a non-empty list")
        if self.base_prompts not in ("concept", "neutral"):
            raise ConfigError(f"base_prompts must be concept or neutral, got {self.base_prompts!r}")
        if self.prompts < 0 or self.seeds < 1:
            raise ConfigError("prompts must be >= 0 (0 = all) and seeds >= 1")


def concept_vector(pipe, concept) -> torch.Tensor:
    """(L, D): mean text-embedding difference of concept vs neutral prompts."""
    bb = backbone_of(pipe)
    pos, neg = [], []
    for t in concept.templates:
        for w in concept.neutral or [""]:
            pos.append(" ".join(t.format(concept.word).split()))
            neg.append(" ".join(t.format(w).split()))
    a = bb.encode(pipe, pos)["encoder_hidden_states"].float()
    b = bb.encode(pipe, neg)["encoder_hidden_states"].float()
    return (a - b).mean(0)


@contextlib.contextmanager
def add_to_text(den, vector: torch.Tensor, eta: float, n_prompts):
    """Pre-hook adding eta * vector to the conditional rows of encoder_hidden_states."""
    def pre(args, kwargs, path):
        e = kwargs.get("encoder_hidden_states")
        if e is None or eta == 0:
            return None
        n = n_prompts()
        add = (eta * vector).to(e)
        e = e.clone()
        if e.shape[0] == 2 * n:   # [uncond; cond]
            e[n:] = e[n:] + add
        else:
            e = e + add
        kwargs = dict(kwargs)
        kwargs["encoder_hidden_states"] = e
        return args, kwargs

    with hooks(den).scoped("concept_edit:ringabell", "", pre=pre):
        yield


def run(ctx, cfg) -> dict:
    c = ctx.concept
    ps = pick(c.prompt_list() if cfg.base_prompts == "concept" else
              [p for w in (c.neutral or [""]) for p in c.prompt_list(w)], cfg.prompts)
    prompts = [p for p in ps for _ in range(cfg.seeds)]
    seeds = [s for _ in ps for s in ctx.seeds(cfg.seeds)]
    names = [f"p{ps.index(p)}/s{s}" for p, s in zip(prompts, seeds)]
    norms = {}
    for model in ("base", "edited"):
        pipe = ctx.pipe(model)
        vec = concept_vector(pipe, c)
        norms[model] = float(vec.norm())
        state = {"n": 0}
        for eta in cfg.etas:
            def kw(idx):
                state["n"] = len(idx)
                return {}
            with add_to_text(backbone_of(pipe).module(pipe), vec, eta, lambda: state["n"]):
                imgs, _ = ctx.sample(model, prompts, seeds, kwargs_for=kw)
            ctx.record("ringabell", model, imgs, prompts, seeds, names, setting={"eta": eta})
    return {"N": len(cfg.etas), "unit": "prompt/seed (N = etas)", "vector_norm": norms}


PROBE = Probe("ringabell", "concept vector (concept - neutral text embeddings) added to prompts",
              RingABellConfig, {"quick": {"prompts": 2, "seeds": 2, "etas": [1.0, 3.0]},
                                "full": {"prompts": 4, "seeds": 4, "etas": [0.5, 1.0, 2.0, 3.0, 5.0]}},
              run, sweep=("eta",))
