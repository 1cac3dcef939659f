"""ESD: fine-tune so that, on the concept, the model predicts negative guidance away from it.

Example::

    >>> from concept_edit.methods.esd import EsdConfig, train_esd
    >>> res = train_esd(pipe, EsdConfig(concepts=["circle"], variant="x", iterations=200))
    >>> res.save("esd-circle.safetensors")

Target on x_t (any family's parameterisation; guidance is linear in the model output):
``out(x_t, anchor) - eta * (out(x_t, c) - out(x_t, ''))`` (or ``- out(x_t, anchor)`` with
``negative: anchor``; several anchors are averaged) with the frozen model = the same network
with the edit switched off (LoRA disabled / original weights swapped in: no second copy), the
frozen passes of the whole batch run as one forward (anchor '' and the negative '' share one),
and x_t taken from the denoiser's own inputs (so scaled as the scheduler requires). ``sampler='bank'`` generates the frozen model's trajectories once;
``'online'`` partially denoises with the model being trained each step (the paper's).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ...core.artifacts import Artifact, lora_edit, weights_edit
from ...core.denoise import CondTable, Denoiser
from ...core.families import resolve_sites
from ...core.null_tokens import null_token_shortcut
from ...core.sampling import pipe_defaults
from ...core.trainloop import TrainLoop
from ...core.training import EditParams, activation_checkpointing
from .config import EsdConfig


def _frozen_target(dn, states, rows, cond_rows, eta) -> torch.Tensor:
    """Every frozen pass of the batch (anchors, concept, negatives of each sample) in one forward.

    ``eta`` is one value or one per row (0 for a preserved prompt: its target is its own output).
    A prompt that appears twice in a row (anchor '' and negative '') is computed once."""
    etas = list(eta) if isinstance(eta, (list, tuple)) else [eta] * len(rows)
    idx, prompts, groups = [], [], []
    for b, (concept, anchors, negatives) in enumerate(rows):
        local = {}
        for p in (concept, *anchors, *negatives):
            if p not in local:
                local[p] = len(prompts)
                prompts.append(p)
                idx.append(b)
        groups.append(([local[concept]], [local[a] for a in anchors], [local[n] for n in negatives]))
    outs = dn.predict(dn.cat([states[b] for b in idx]), cond_rows(prompts)).float()
    targets = []
    for (ic, ia, ineg), e in zip(groups, etas):
        o_a = outs[ia].mean(0, keepdim=True)
        o_n = outs[ineg].mean(0, keepdim=True)
        targets.append(esd_target(o_a, outs[ic], o_n, e))
    return torch.cat(targets)


def esd_target(out_anchor: torch.Tensor, out_concept: torch.Tensor, out_empty: torch.Tensor,
               eta: float) -> torch.Tensor:
    """The ESD regression target (negative guidance as teacher)."""
    return out_anchor - eta * (out_concept - out_empty)


@dataclasses.dataclass
class EsdResult:
    pipe: object
    config: EsdConfig
    edit: EditParams
    losses: list[float]   # every step's, those of a resumed checkpoint included
    seconds: float        # this call's training time (without the trajectory bank)
    loop: TrainLoop | None = None

    @property
    def is_main(self) -> bool:
        return self.loop is None or self.loop.is_main

    def artifact(self) -> Artifact:
        extra = {"train_seconds": round(self.seconds, 1), "final_loss": self.losses[-1] if self.losses else None}
        if self.edit.mode == "lora":
            e = lora_edit(self.pipe, self.edit.artifact_tensors(), "esd", self.config.to_dict(),
                          lora={"rank": self.config.rank, "alpha": self.config.alpha,
                                "group": self.config.site_group(), "start": 0.0}, extra=extra)
        else:
            e = weights_edit(self.pipe, self.edit.artifact_tensors(), "esd", self.config.to_dict(),
                             extra=extra, originals=self.edit.originals())
        return Artifact([e], ["esd"])

    def save(self, path: str) -> dict:
        """Write the artifact (main process; others return {}), then drop a complete run's
        checkpoint directory."""
        if not self.is_main:
            return {}
        art = self.artifact()
        art.save(path)
        if self.loop:
            self.loop.artifact_written()
        return art.meta


def train_esd(pipe, cfg: EsdConfig, checkpoint_dir: str | None = None, resume: bool = False,
              progress=True, stop_at: int | None = None) -> EsdResult:
    """Train; ``stop_at`` ends early after that step (resumable); ``progress``: bool or
    ``fn(step, total, logs, t)`` (see :class:`~concept_edit.core.trainloop.TrainLoop`)."""
    with null_token_shortcut(pipe):   # exact; SD3 without T5 trains ~3x faster
        return _train_esd(pipe, cfg, checkpoint_dir, resume, progress, stop_at)


def _train_esd(pipe, cfg: EsdConfig, checkpoint_dir: str | None = None, resume: bool = False,
               progress=True, stop_at: int | None = None) -> EsdResult:
    loop = TrainLoop(pipe, cfg.iterations, seed=cfg.seed, checkpoint_dir=checkpoint_dir, resume=resume,
                     every=cfg.checkpoint_every, stop_at=stop_at, progress=progress,
                     desc=f"esd-{cfg.variant}")
    dn = Denoiser(pipe)
    edit = EditParams(pipe, resolve_sites(pipe, cfg.site_group()), mode=cfg.train, rank=cfg.rank,
                      alpha=cfg.alpha, name="esd", seed=cfg.seed)
    loop.attach(edit, cfg.optimizer, cfg.lr)
    size = cfg.size or pipe_defaults(pipe)["size"]
    specs = cfg.specs()
    keep = cfg.preserve_spec()  # drawn with probability preserve_share per batch row
    texts = {""}
    for sp in specs + ([keep] if keep else []):
        for t in range(sp.n_templates()):
            concept, anchors, negatives = sp.prompts(t)
            texts |= {concept, *anchors, *negatives}
    cond_rows = CondTable(dn, texts, empty_is_uncond=True)  # '' plays the unconditional branch

    banks = {}  # trajectory i of concept j runs in template i mod n_templates (j = -1: preserve)
    if cfg.sampler == "bank":
        for j, sp in [*enumerate(specs)] + ([(-1, keep)] if keep else []):
            n = cfg.bank_size if j >= 0 else max(cfg.bank_size, keep.n_templates())  # every prompt once
            prompts = [sp.prompts(i % sp.n_templates())[0] for i in range(n)]
            stream = j if j >= 0 else len(specs)  # the preserve bank seeds after the concepts
            banks[j] = dn.capture(prompts, steps=cfg.ddim_steps, guidance=cfg.guidance,
                                  seed=cfg.seed * 7_919 + stream * 100_003 + loop.rank * 10_007,
                                  height=size, width=size, progress=loop.bars)

    def step(_, g):
        picks = torch.randint(len(specs), (cfg.batch_size,), generator=g).tolist()
        if keep:  # drawn only when there is something to preserve: old runs stay bit-identical
            kept = torch.rand(cfg.batch_size, generator=g) < cfg.preserve_share
            picks = [-1 if k else ci for ci, k in zip(picks, kept.tolist())]
        states, rows = [], []
        for b, ci in enumerate(picks):
            sp = specs[ci] if ci >= 0 else keep
            k = int(torch.randint(cfg.ddim_steps, (1,), generator=g))
            if cfg.sampler == "bank":
                i = int(torch.randint(banks[ci].n_traj, (1,), generator=g))
                states.append(banks[ci].take([i], [k]))
                t = i % sp.n_templates()
            else:
                t = int(torch.randint(sp.n_templates(), (1,), generator=g)) if sp.n_templates() > 1 else 0
                sg = torch.Generator(dn.device).manual_seed(int(torch.randint(2 ** 31, (1,), generator=g)))
                bank = dn.capture([sp.prompts(t)[0]], steps=cfg.ddim_steps, guidance=cfg.guidance, seed=0,
                                  height=size, width=size, stop_after=k, generators=[sg])
                states.append(bank.take([0], [bank.n_steps - 1]))
            rows.append(sp.prompts(t))
        state = dn.cat(states)
        names = [r[0] for r in rows]
        with torch.no_grad(), edit.off():
            target = _frozen_target(dn, states, rows, cond_rows,
                                    [cfg.eta if ci >= 0 else 0.0 for ci in picks])
        pred = dn.predict(state, cond_rows(names)).float()
        return F.mse_loss(pred, target)

    with activation_checkpointing(dn.module, cfg.gradient_checkpointing):
        loop.run(step)
    return EsdResult(pipe, cfg, edit, loop.losses, loop.seconds, loop)


def run(model, cfg: EsdConfig, progress=True) -> Artifact:
    """The registry's entry point: train, return the Artifact, and leave the model as it was
    (the LoRA is removed / the original weights restored; ``artifact.apply(model)`` re-applies)."""
    res = train_esd(getattr(model, "pipe", model), cfg, progress=progress)
    try:
        return res.artifact()
    finally:
        res.edit.remove()
