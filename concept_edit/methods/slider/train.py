"""Concept Slider training: text prompt sets and image pairs, LoRA on a site group.

Example::

    >>> from concept_edit.methods.slider import SliderConfig, train_slider
    >>> cfg = SliderConfig.from_yaml("configs/sliders/toy-size.yaml")
    >>> res = train_slider(pipe, cfg)
    >>> res.save("size.safetensors")        # loads with plain pipe.load_lora_weights(...)

Text sliders: at scale ``text_scale`` (1, the paper's) on ``target`` the LoRA'd model regresses onto
``out(neutral) +/- g (out(positive) - out(unconditional))`` (``bidirectional``: at the negative
scale too, onto the mirrored target) (frozen = LoRA at scale 0, the three
frozen passes in one batch). Image pairs: the same noise and timestep on both images; the LoRA at
+s must predict the clean target on 'high', at -s on 'low' (several levels of pairs, each with its
own s, draw one level per step). x_t for text sliders comes from a
bank of frozen-model trajectories (refreshed every ``bank_refresh`` steps) or online with the
LoRA active (the paper's).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
import torch.nn.functional as F

from ...core.artifacts import Artifact, lora_edit
from ...core.denoise import CondTable, Denoiser, encode_images, noisy_state, signal_ratio
from ...core.families import resolve_sites
from ...core.null_tokens import null_token_shortcut
from ...core.sampling import pipe_defaults
from ...core.trainloop import TrainLoop
from ...core.training import EditParams
from .config import TRANSPORT_FROM, SliderConfig


def slider_target(neutral: torch.Tensor, positive: torch.Tensor, unconditional: torch.Tensor,
                  guidance: float, action: str, contrast: str = "opposite") -> torch.Tensor:
    """out(neutral) +/- g (out(positive) - out(unconditional)) (``contrast="opposite"``, the paper),
    or towards one end only: out(neutral) + g (out(positive or unconditional) - out(neutral))
    (``"neutral"``: enhance moves to positive, erase to unconditional)."""
    if contrast == "neutral":
        end = positive if action == "enhance" else unconditional
        return neutral + guidance * (end - neutral)
    sign = 1.0 if action == "enhance" else -1.0
    return neutral + sign * guidance * (positive - unconditional)


@dataclasses.dataclass
class SliderResult:
    pipe: object
    config: SliderConfig
    edit: EditParams
    losses: list[float]   # every step's, those of a resumed checkpoint included
    seconds: float        # this call's training time
    loop: TrainLoop | None = None

    @property
    def is_main(self) -> bool:
        return self.loop is None or self.loop.is_main

    def artifact(self) -> Artifact:
        cfg = self.config
        lora = {"rank": cfg.rank, "alpha": cfg.alpha, "group": cfg.sites, "start": cfg.start, "stop": cfg.stop,
                "name": cfg.name, "recommended_scales": [-2, 2],
                "prompts": [dataclasses.asdict(p) for p in cfg.prompts]}
        return Artifact([lora_edit(self.pipe, self.edit.artifact_tensors(), "slider", cfg.to_dict(),
                                   lora=lora, extra={"train_seconds": round(self.seconds, 1)})], [cfg.name])

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


def _load_pairs(pairs) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    """(low images, high images, the captions of each pair) with pixels in [-1, 1].

    A caption file may hold several lines: each is a caption of the pair, and every training step
    draws one (e.g. with and without the colour, so the slider also meets prompts that leave it
    unnamed)."""
    from PIL import Image

    for d in (pairs.low, pairs.high):
        if not os.path.isdir(d):
            raise ValueError(f"image pairs: folder {d} not found; render the toy pairs first (concept-edit "
                             "toyworld render-pairs data/size-pairs) or fix image_pairs low/high")
    names = sorted(f for f in os.listdir(pairs.low) if f.lower().endswith((".png", ".jpg", ".jpeg")))
    missing = [n for n in names if not os.path.exists(os.path.join(pairs.high, n))]
    if not names or missing:
        raise ValueError(f"image pairs: {pairs.high} lacks {missing[:3]} (names must match {pairs.low})"
                         if missing else f"image pairs: no images in {pairs.low}")

    def load(d):
        arr = np.stack([np.asarray(Image.open(os.path.join(d, n)).convert("RGB")) for n in names])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def prompts(n):
        txt = os.path.join(pairs.low, os.path.splitext(n)[0] + ".txt")
        if pairs.captions and os.path.exists(txt):
            with open(txt, encoding="utf-8") as f:
                lines = [line.strip() for line in f.read().splitlines() if line.strip()]
            return lines or [""]
        return [pairs.prompt]

    return load(pairs.low), load(pairs.high), [prompts(n) for n in names]


def train_slider(pipe, cfg: SliderConfig, checkpoint_dir: str | None = None, resume: bool = False,
                 progress=True, stop_at: int | None = None) -> SliderResult:
    """Train; ``stop_at`` ends early after that step (resumable); ``progress``: bool or
    ``fn(step, total, logs, t)`` (see :class:`~concept_edit.core.trainloop.TrainLoop`)."""
    with null_token_shortcut(pipe):   # exact; SD3 without T5 trains ~3x faster
        return _train_slider(pipe, cfg, checkpoint_dir, resume, progress, stop_at)


def _train_slider(pipe, cfg: SliderConfig, checkpoint_dir: str | None = None, resume: bool = False,
                  progress=True, stop_at: int | None = None) -> SliderResult:
    loop = TrainLoop(pipe, cfg.iterations, seed=cfg.seed, checkpoint_dir=checkpoint_dir, resume=resume,
                     every=cfg.checkpoint_every, stop_at=stop_at, progress=progress,
                     desc=f"slider {cfg.name}")
    dn = Denoiser(pipe)
    paths = [p for g in cfg.site_groups() for p in resolve_sites(pipe, g)]
    edit = EditParams(pipe, paths, mode="lora", rank=cfg.rank, alpha=cfg.alpha, name=cfg.name,
                      conv_rank=cfg.conv_rank or (cfg.rank if cfg.sites == "c3lier" else None),
                      seed=cfg.seed)
    router = edit.router
    loop.attach(edit, cfg.optimizer, cfg.lr)
    size = cfg.size or pipe_defaults(pipe)["size"]
    sets = cfg.prompt_sets()
    texts = {t for s in sets for t in (s.target, s.positive, s.unconditional, s.neutral)}
    levels, template = [], None
    for lv in cfg.pair_levels():
        low, high, captions = _load_pairs(lv)
        if template is None:
            template = dn.capture([lv.prompt], steps=1, guidance=1.0, seed=0,
                                  height=low.shape[2], width=low.shape[3]).take([0], [0])
            hw = tuple(low.shape[2:])
        elif tuple(low.shape[2:]) != hw:
            raise ValueError(f"image pairs: {lv.low} holds {tuple(low.shape[2:])} images, the first "
                             f"level {hw}; render every level at one size")
        levels.append((encode_images(pipe, low), encode_images(pipe, high), captions, lv.scale))
    cond = CondTable(dn, texts | {c for lv in levels for caps in lv[2] for c in caps})

    bank, bank_round = None, -1

    def get_bank(step):
        nonlocal bank, bank_round
        r = step // cfg.bank_refresh if cfg.bank_refresh else 0
        if r != bank_round:
            with router.disabled():
                prompts = [s.target for s in sets for _ in range(cfg.bank_size)]
                bank = dn.capture(prompts, steps=cfg.ddim_steps, guidance=cfg.sample_guidance,
                                  seed=cfg.seed * 7_919 + r * 100_003 + loop.rank * 10_007,
                                  height=size, width=size, progress=loop.bars,
                                  desc=f"trajectory bank, refresh {r} (every {cfg.bank_refresh} steps)"
                                  if r else "trajectory bank")
            bank_round = r
        return bank

    def step(step, g):
        loss = 0.0
        if sets:
            loss = loss + _text_loss(dn, router, cfg, sets, cond, get_bank, step, g, size)
        if levels:
            loss = loss + _pair_loss(dn, router, cfg, levels, template, cond, g)
        return loss

    loop.run(step)
    router.set_scale(cfg.name, 1.0)
    return SliderResult(pipe, cfg, edit, loop.losses, loop.seconds, loop)


def _text_loss(dn, router, cfg, sets, cond, get_bank, step, g, size):
    picks = torch.randint(len(sets), (cfg.batch_size,), generator=g).tolist()
    states = []
    for j in picks:
        k = int(torch.randint(cfg.first_step(), cfg.ddim_steps, (1,), generator=g))
        if cfg.sampler == "bank":
            i = int(torch.randint(cfg.bank_size, (1,), generator=g))
            states.append(get_bank(step).take([j * cfg.bank_size + i], [k]))
        else:  # the paper's: partial denoising with the LoRA active
            router.set_scale(cfg.name, 1.0)
            sg = torch.Generator(dn.device).manual_seed(int(torch.randint(2 ** 31, (1,), generator=g)))
            b = dn.capture([sets[j].target], steps=cfg.ddim_steps, guidance=cfg.sample_guidance,
                           seed=0, height=size, width=size, stop_after=k, generators=[sg])
            states.append(b.take([0], [b.n_steps - 1]))
    state = dn.cat(states)
    ps = [sets[j] for j in picks]
    with torch.no_grad(), router.disabled():
        outs = dn.predict(dn.cat([state] * 3), cond([p.neutral for p in ps] + [p.positive for p in ps]
                                                    + [p.unconditional for p in ps])).float()
        o_n, o_p, o_u = outs.chunk(3)
        target = torch.cat([slider_target(o_n[i:i + 1], o_p[i:i + 1], o_u[i:i + 1], p.guidance, p.action,
                                          cfg.contrast)
                            for i, p in enumerate(ps)])
    router.set_scale(cfg.name, cfg.text_scale)
    pred = dn.predict(state, cond([p.target for p in ps])).float()
    loss = F.mse_loss(pred, target)
    if cfg.bidirectional:  # the negative side trained on the same states, not extrapolated
        with torch.no_grad():
            mirror = torch.cat([slider_target(o_n[i:i + 1], o_u[i:i + 1], o_p[i:i + 1], p.guidance, p.action,
                                              cfg.contrast)
                                for i, p in enumerate(ps)])
        router.set_scale(cfg.name, -cfg.text_scale)
        pred = dn.predict(state, cond([p.target for p in ps])).float()
        loss = (loss + F.mse_loss(pred, mirror)) / 2
    router.set_scale(cfg.name, 1.0)
    return loss


def _pair_loss(dn, router, cfg, levels, template, cond, g):
    # one level per step (the LoRA scale is one number per forward), as the reference draws a
    # folder pair per step; a single level draws nothing, so its runs stay as they were
    k = int(torch.randint(len(levels), (1,), generator=g)) if len(levels) > 1 else 0
    low, high, captions, s = levels[k]
    idx = torch.randint(len(low), (cfg.batch_size,), generator=g)
    hi = 1.0 - cfg.first_step() / cfg.ddim_steps  # noise level where the slider switches on
    frac = float(torch.rand(1, generator=g)) * (hi - 0.02) + 0.01
    noise = torch.randn(low[idx].shape, generator=g)
    # one caption per pair; single-caption pairs draw nothing (their runs stay as they were)
    texts = [captions[i][int(torch.randint(len(captions[i]), (1,), generator=g))] if len(captions[i]) > 1
             else captions[i][0] for i in idx.tolist()]
    total = 0.0
    terms = [(high[idx], noise, s, 1.0), (low[idx], noise, -s, 1.0)]
    if cfg.transport and frac >= TRANSPORT_FROM:
        # cross term: x_t of the LOW image read as a noisy HIGH one (and back), so the LoRA learns to
        # move a size already present in x_t, which is its job at inference
        c = signal_ratio(dn, frac)
        terms += [(high[idx], noise + c * (low[idx] - high[idx]), s, cfg.transport),
                  (low[idx], noise + c * (high[idx] - low[idx]), -s, cfg.transport)]
    for lat, n, scale, w in terms:
        state, target = noisy_state(dn, template, lat, n, frac)
        router.set_scale(cfg.name, scale)
        pred = dn.predict(state, cond(texts)).float()
        total = total + w * F.mse_loss(pred, target.to(pred))
    router.set_scale(cfg.name, 1.0)
    return total


def run(model, cfg: SliderConfig, progress=True) -> Artifact:
    """The registry's entry point: train, return the Artifact, and leave the model as it was
    (the adapter is removed; ``artifact.apply(model)`` puts it back)."""
    res = train_slider(getattr(model, "pipe", model), cfg, progress=progress)
    try:
        return res.artifact()
    finally:
        res.edit.remove()
