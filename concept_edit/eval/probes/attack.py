"""``attack``: an UnlearnDiffAtk-style prompt attack on the edited model.

k prefix tokens, each a relaxed one-hot over the vocabulary (projected on the simplex after
every Adam step), are optimised with the edited model's diffusion loss on a base-model image of
the prompt (noised at random levels). Every ``check_every`` steps (and before the attack) the
argmax tokens are decoded into a text prefix, the edited model generates the prompt's seed with
it, and the scorer decides; the attack stops at the first success. Like UnlearnDiffAtk, a
success before any optimisation counts (``pre_attack`` in the extras). The base reference is
the base model given the final adversarial prompt. The adversarial prompts are in the JSON.

Cost: per attacked prompt, up to steps denoiser forward+backward passes + one image per check.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ...core.backbones import backbone_of
from ...core.config import ConfigError, StrictConfig, field
from ._base import Probe, ProbeSkipped, TokenPatch, diffusion_loss, pick, sample_levels


@dataclasses.dataclass
class AttackConfig(StrictConfig):
    prompts: int = field(2, "concept prompts attacked (one base image each; 0 = all)")
    k: int = field(3, "prefix tokens (UnlearnDiffAtk: 5 for nudity, 3 for objects)")
    steps: int = field(40, "Adam steps per prompt at most")
    lr: float = field(0.01, "Adam learning rate of the relaxed one-hot tokens")
    batch: int = field(2, "noise levels per step")
    check_every: int = field(10, "steps between checks (argmax tokens -> image -> scorer)")
    check_pre: bool = field(True, "check the plain prompt before optimising (counted, as the reference does)")
    exclude_concept: bool = field(False, "forbid the concept word's own tokens in the prefix")

    def check(self) -> None:
        if self.k < 1 or self.steps < 0 or self.check_every < 1 or self.batch < 1:
            raise ConfigError("k, check_every and batch must be >= 1, steps >= 0")


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex."""
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    ind = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    cond = (u - css / ind) > 0
    rho = cond.to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp(min=0)


def attack_prompt(ctx, cfg, prompt: str, seed: int, x0: torch.Tensor, unit: str) -> dict:
    pipe = ctx.edited
    bb = backbone_of(pipe)
    patch = TokenPatch(pipe)
    tok = patch.pairs[0][1]
    g = torch.Generator().manual_seed(seed * 7 + 13)
    Es = [E.detach().float() for E in patch.embeddings()]
    vocab = Es[0].shape[0]
    allowed = torch.ones(vocab, dtype=torch.bool)
    for i in tok.all_special_ids:
        if i < vocab:
            allowed[i] = False
    allowed[patch.ids[0]] = False
    if cfg.exclude_concept:
        for i in tok(ctx.concept.word, add_special_tokens=False)["input_ids"]:
            allowed[i] = False
    if any(E.shape[0] != vocab for E in Es):
        raise ProbeSkipped("the attack needs text encoders sharing one vocabulary (this model has several of different sizes)")
    cand = allowed.nonzero()[:, 0]
    init = cand[torch.randint(0, len(cand), (cfg.k,), generator=g)]
    p = torch.zeros(cfg.k, vocab)
    p[torch.arange(cfg.k), init] = 1.0
    p.requires_grad_(True)
    opt = torch.optim.Adam([p], lr=cfg.lr)
    relaxed_prompt = " ".join([patch.word] * cfg.k + [prompt])
    history = []

    def check(step: int) -> bool:
        ids = (p.detach() * allowed).argmax(-1).tolist() if step else []
        prefix = tok.decode(ids).strip() if ids else ""
        text = f"{prefix} {prompt}".strip()
        imgs, _ = ctx.sample("edited", [text], [seed])
        hit, = ctx.record("attack", "edited", imgs, [text], [seed], [unit], setting={"step": step},
                          extra={"prefix": prefix})
        history.append({"step": step, "prompt": text, "hit": hit})
        return hit

    success = cfg.check_pre and check(0)
    steps_run = 0
    losses = []
    if not success:
        with torch.enable_grad():
            for step in range(1, cfg.steps + 1):
                lvl = sample_levels(pipe.scheduler, cfg.batch, g)
                noise = torch.randn((cfg.batch,) + tuple(x0.shape[1:]), generator=g)
                with patch.active([(p * allowed) @ E for E in Es]):
                    cond = bb.encode(pipe, [relaxed_prompt] * cfg.batch, grad=True)
                loss = diffusion_loss(pipe, x0.expand(cfg.batch, *x0.shape[1:]), cond, lvl, noise, ctx.size).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    p.copy_(project_simplex(p * allowed))
                losses.append(float(loss.detach()))
                steps_run = step
                if step % cfg.check_every == 0 or step == cfg.steps:
                    if check(step):
                        success = True
                        break
    return {"prompt": prompt, "seed": seed, "success": bool(success), "steps_run": steps_run,
            "pre_attack": bool(history and history[0]["step"] == 0 and history[0]["hit"]),
            "adversarial_prompt": history[-1]["prompt"] if history else prompt,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "history": history}


def run(ctx, cfg) -> dict:
    ps = pick(ctx.concept.prompt_list(), cfg.prompts)
    seeds = [ctx.seed] * len(ps)
    base = ctx.cached("base", ps, seeds)
    out = []
    for i, (prompt, seed, row) in enumerate(zip(ps, seeds, base)):
        out.append(attack_prompt(ctx, cfg, prompt, seed, row["latents"].float(), f"p{i}"))
    adv = [o["adversarial_prompt"] for o in out]
    imgs, _ = ctx.sample("base", adv, seeds)
    ctx.record("attack", "base", imgs, adv, seeds, [f"p{i}" for i in range(len(adv))])
    n_checks = max((len(o["history"]) for o in out), default=0)
    return {"N": n_checks, "unit": "attacked prompt (N = checks made, at most)",
            "attack_success_rate": float(np.mean([o["success"] for o in out])) if out else 0.0,
            "attacks": out}


PROBE = Probe("attack", "UnlearnDiffAtk-style relaxed prefix-token attack, early stop on success",
              AttackConfig, {"quick": {"prompts": 2, "steps": 30, "check_every": 10},
                             "full": {"prompts": 4, "steps": 120, "check_every": 20}}, run)
