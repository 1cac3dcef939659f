"""Shared pieces of the audit probes: the probe spec, the run context, scoring, denoiser counts,
placeholder-token embedding patches and the diffusion loss used by inversion and attack.

Example::

    >>> from concept_edit.eval.probes import PROBES
    >>> probe = PROBES.get("noise")                       # imported now, not before
    >>> cfg = probe.make_config("quick", {"etas": [1.0, 1.85]})
    >>> probe.run(ctx, cfg)                               # ctx: Context (eval/audit.py builds it)
    >>> ctx.records                                       # one dict per scored image

A probe records every image it makes through ``ctx.record`` (the scorer is applied there); the
audit turns the records into per-sample and best-of-N rates (a unit = one prompt/seed pair or
one optimised prompt; N = the attempts of a unit), per swept setting, for base and edited.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable

import numpy as np
import torch

from ...core import schedule as S
from ...core.backbones import backbone_of
from ...core.config import ConfigError, StrictConfig
from ...core.hooks import hooks
from ...core.sampler import sample
from ...core.sampling import pipe_defaults

BUDGETS = ("quick", "full")


class ProbeSkipped(RuntimeError):
    """The probe does not apply to this model (e.g. eta on a flow-matching scheduler)."""


@dataclasses.dataclass
class Probe:
    name: str
    help: str
    config: type                 # a StrictConfig subclass: the probe's parameters
    budgets: dict                # {"quick": {field: value}, "full": {...}}
    run: Callable                # run(ctx, cfg) -> dict of extras (records go to ctx.records)
    sweep: tuple = ()            # setting keys the probe sweeps (one plot each)
    metric: str = "recovery"     # what a hit means: 'recovery' (concept shown) or 'kept'

    def make_config(self, budget: str = "quick", overrides: dict | None = None) -> StrictConfig:
        if budget not in self.budgets:
            raise ConfigError(f"unknown budget {budget!r}; choose one of {', '.join(self.budgets)}")
        d = dict(self.budgets[budget])
        d.update(overrides or {})
        return self.config.from_dict(d)


def pick(items: list, n: int) -> list:
    """``n`` items spread evenly over the list (all when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(items):
        return list(items)
    idx = sorted(set(np.linspace(0, len(items) - 1, n).round().astype(int).tolist()))
    return [items[i] for i in idx]


def to_uint8(images) -> np.ndarray:
    return (np.clip(np.asarray(images), 0, 1) * 255).round().astype(np.uint8)


class Context:
    """What a probe needs: base and edited pipelines, the concept, the scorer, the seed, caches.

    ``edited`` may be the base pipeline itself (a null edit or a negative-prompt audit);
    ``negative_prompt`` is used by every edited-model sampling call.
    """

    def __init__(self, base, edited, concept, scorer: Callable, *, negative_prompt: str | None = None,
                 seed: int = 0, batch: int = 16, cache_dir: str = ".cache/audit", progress: bool = False,
                 size: int | None = None, shard=None):
        from ...core.shard import Shard

        self.base, self.edited, self.concept = base, edited, concept
        self.shard = shard or Shard()
        self.scorer = scorer
        self.negative_prompt = negative_prompt or None
        self.seed, self.batch, self.cache_dir, self.progress = seed, batch, cache_dir, progress
        self.defaults = pipe_defaults(base)
        self.size = int(size or self.defaults["size"])
        self.steps = int(self.defaults["steps"])
        self.guidance = float(self.defaults["guidance"])
        self._cache: dict[tuple, dict] = {}
        self.records: list[dict] = []
        self.images: list[np.ndarray] = []
        self.calls = 0
        self.evals = 0
        self._bar = None

    # -- models ------------------------------------------------------------------------------
    def pipe(self, model: str):
        return self.base if model == "base" else self.edited

    def negative(self, model: str) -> str | None:
        return self.negative_prompt if model == "edited" else None

    def seeds(self, n: int) -> list[int]:
        return [self.seed + j for j in range(n)]

    # -- denoiser evaluation counts and the probe's progress bar -----------------------------
    @contextlib.contextmanager
    def counting(self, desc: str):
        from tqdm.auto import tqdm

        mods = {id(m): m for m in (backbone_of(p).module(p) for p in (self.base, self.edited))}
        self.calls = self.evals = 0
        bar = tqdm(desc=f"audit {desc}", unit="eval", disable=not (self.progress and self.shard.is_main),
                   leave=True)

        def pre(args, kwargs, path):
            x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            rows = int(x.shape[0]) if isinstance(x, torch.Tensor) else 1
            self.calls += 1
            self.evals += rows
            bar.update(rows)
            return None

        with contextlib.ExitStack() as st:
            for m in mods.values():
                st.enter_context(hooks(m).scoped("concept_edit:audit-count", "", pre=pre))
            try:
                yield
            finally:
                bar.close()

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, model: str, prompts: list[str], seeds: list[int], kwargs_for: Callable | None = None,
               **kw) -> tuple[np.ndarray, list]:
        """Images (uint8) for ``prompts`` / ``seeds`` (paired) in batches; ``kwargs_for(idx)``
        gives per-batch extras (start latents, masks, guidance functions) for indices ``idx``."""
        pipe = self.pipe(model)
        starts = list(range(0, len(prompts), self.batch))
        mine = self.shard.mine(range(len(starts)))      # under a launch: every world-th batch
        done = []
        for b in mine:
            idx = list(range(starts[b], min(starts[b] + self.batch, len(prompts))))
            extra = dict(kw)
            if kwargs_for is not None:
                extra.update(kwargs_for(idx))
            neg = self.negative(model)
            res = sample(pipe, [prompts[j] for j in idx], seed=[seeds[j] for j in idx],
                         steps=self.steps, guidance=self.guidance, height=self.size, width=self.size,
                         negative_prompt=[neg] * len(idx) if neg else None, **extra)
            done.append((to_uint8(res.images), res))
        done = self.shard.gather(mine, done)             # the one-process order on every rank
        out, results = [d[0] for d in done], [d[1] for d in done]
        return (np.concatenate(out) if out else np.zeros((0, self.size, self.size, 3), np.uint8)), results

    def cached(self, model: str, prompts: list[str], seeds: list[int]) -> list[dict]:
        """Plain generations, computed once per (model, prompt, seed) for the whole audit:
        {'image': uint8 HWC, 'latents': clean latents (1, ...), 'states': x_t before each step}.
        Their denoiser evaluations count in the probe that first asked for them."""
        todo = [(p, s) for p, s in zip(prompts, seeds) if (model, p, s) not in self._cache]
        todo = list(dict.fromkeys(todo))
        if todo:
            imgs, results = self.sample(model, [p for p, _ in todo], [s for _, s in todo],
                                        return_states=model == "base")
            k = 0
            for res in results:
                for b in range(res.latents.shape[0]):
                    p, s = todo[k]
                    states = torch.stack([st[b:b + 1] for st in res.states]) if res.states else None
                    self._cache[(model, p, s)] = {"image": imgs[k], "latents": res.latents[b:b + 1].detach(),
                                                  "states": states}
                    k += 1
        return [self._cache[(model, p, s)] for p, s in zip(prompts, seeds)]

    # -- scoring -----------------------------------------------------------------------------
    def score(self, images: np.ndarray) -> list[tuple[str | None, float | None, bool]]:
        """(label, score, hit) per image. The scorer returns labels, scores in [0, 1] or
        (label, score) pairs; a hit is label == target, else score >= threshold."""
        if len(images) == 0:
            return []
        raw = list(self.scorer(np.ascontiguousarray(images)))
        if len(raw) != len(images):
            raise ValueError(f"the scorer returned {len(raw)} results for {len(images)} images")
        out = []
        target, thr = self.concept.target_label, self.concept.threshold
        for r in raw:
            label, sc = (r if isinstance(r, tuple) else (r, None) if isinstance(r, str) else (None, r))
            sc = None if sc is None else float(sc)
            hit = (label == target) if label is not None else (sc is not None and sc >= thr)
            out.append((label, sc, bool(hit)))
        return out

    def record(self, probe: str, model: str, images: np.ndarray, prompts: list[str], seeds: list,
               units: list[str], setting: dict | None = None, score_images: np.ndarray | None = None,
               expected: list[str] | None = None, extra: dict | None = None) -> list[bool]:
        """Score ``images`` (or ``score_images``: e.g. the inpainted region) and keep them.
        ``expected``: labels that count as a hit instead of the target (interference)."""
        scored = self.score(images if score_images is None else score_images)
        hits = []
        for i, (label, sc, hit) in enumerate(scored):
            if expected is not None:
                hit = label == expected[i]
            rec = {"probe": probe, "model": model, "unit": units[i], "prompt": prompts[i],
                   "seed": seeds[i], "setting": dict(setting or {}), "label": label,
                   "score": None if sc is None else round(sc, 4), "hit": bool(hit)}
            if expected is not None:
                rec["expected"] = expected[i]
            rec.update(extra or {})
            self.records.append(rec)
            self.images.append(images[i])
            hits.append(bool(hit))
        return hits


# -- noise levels --------------------------------------------------------------------------
def denoiser_timestep(sched, lvl):
    """The timestep value the sampler passes for a noise level (flow: sigma x n_train)."""
    if S.is_flow(sched):
        n = float(getattr(sched.config, "num_train_timesteps", 1000))
        return torch.as_tensor(lvl, dtype=torch.float32) * n
    return torch.as_tensor(lvl)


def level_of(sched, t):
    """Noise level (timestep or flow sigma) of a sampler timestep."""
    if S.is_flow(sched):
        return float(t) / float(getattr(sched.config, "num_train_timesteps", 1000))
    return t


def coefficients(sched, lvl) -> tuple[float, float]:
    """(signal, noise) coefficients of x_t at a level: sqrt(a), sqrt(1 - a) or 1 - s, s."""
    one = torch.ones(1)
    sig = float(S.noisy(sched, one, torch.zeros(1), lvl))
    noi = float(S.noisy(sched, torch.zeros(1), one, lvl))
    return sig, noi


def output_coefficients(sched, lvl) -> tuple[float, float]:
    """d x0 / d output and d eps / d output (both affine in the denoiser output)."""
    z, o = torch.zeros(1), torch.ones(1)
    cx = float(S.x0_from_output(sched, o, z, lvl) - S.x0_from_output(sched, z, z, lvl))
    ce = float(S.eps_from_output(sched, o, z, lvl) - S.eps_from_output(sched, z, z, lvl))
    return cx, ce


def sample_levels(sched, n: int, gen: torch.Generator, high_bias: float = 1.0):
    """``n`` random training noise levels; ``high_bias`` > 1 favours high noise (u ** (1 / b))."""
    u = torch.rand(n, generator=gen) ** (1.0 / high_bias)
    if S.is_flow(sched):
        return u.clamp(0.02, 0.98)
    n_train = len(sched.alphas_cumprod)
    return (u * (n_train - 1)).round().long().clamp(1, n_train - 1)


# -- the diffusion loss (inversion, attack) ------------------------------------------------
def diffusion_loss(pipe, x0: torch.Tensor, cond: dict, lvl, noise: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample MSE of the denoiser's output against its target at ``noisy(x0, noise, lvl)``;
    ``cond``: text keyword inputs (with gradients when they come from ``encode(grad=True)``)."""
    from ...core.sampler import _predict
    from ...core.sampler_parts import denoiser_kwargs

    fam = backbone_of(pipe)
    den = fam.module(pipe)
    sched = pipe.scheduler
    n = x0.shape[0]
    x_t = S.noisy(sched, x0, noise, lvl)
    device = den.device
    kw = denoiser_kwargs(pipe, fam.sampler, den, cond, None, n, size, size, 1.0, device)
    t = denoiser_timestep(sched, lvl).to(device)
    pred = _predict(fam, den, x_t.to(device, den.dtype), t, kw, False, 1.0).float()
    target = S.target(sched, x0, noise, lvl).to(pred)
    return ((pred - target) ** 2).flatten(1).mean(1)


# -- placeholder tokens: embedding rows replaced in every text encoder -----------------------
_ENCODERS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3"))
PLACEHOLDERS = ("sks", "xyz", "zwx", "*", "ph")


class TokenPatch:
    """Inputs of a placeholder word replaced by vectors in each text encoder of ``pipe``.

    >>> patch = TokenPatch(pipe)                      # finds a single-token placeholder word
    >>> prompts = [f"a {patch.word}"]
    >>> with patch.active([v]):                       # v: (k, dim) per encoder; occurrence j gets v[j % k]
    ...     cond = backbone_of(pipe).encode(pipe, prompts, grad=True)
    """

    def __init__(self, pipe, candidates=PLACEHOLDERS):
        self.pipe = pipe
        self.pairs = [(getattr(pipe, te), getattr(pipe, tk)) for te, tk in _ENCODERS
                      if getattr(pipe, te, None) is not None and getattr(pipe, tk, None) is not None]
        if not self.pairs:
            raise ProbeSkipped("this pipeline has no text encoder with a tokenizer")
        for word in candidates:
            ids = [self._single(tk, word) for _, tk in self.pairs]
            if all(i is not None for i in ids):
                self.word, self.ids = word, ids
                break
        else:
            raise ProbeSkipped(f"no single-token placeholder among {candidates} for these tokenizers")

    @staticmethod
    def _single(tok, word):
        """The word's one token id, when it is one token alone and inside a prompt (sentencepiece
        tokenizers can split a word differently after a space)."""
        ids = tok(word, add_special_tokens=False)["input_ids"]
        ids = [i for i in ids if i not in set(tok.all_special_ids)]
        if len(ids) == 1 and ids[0] in tok(f"a {word} on a background", add_special_tokens=False)["input_ids"]:
            return ids[0]
        return None

    def embeddings(self) -> list[torch.Tensor]:
        """The token embedding matrix of each encoder."""
        return [te.get_input_embeddings().weight for te, _ in self.pairs]

    def word_vector(self, word: str) -> list[torch.Tensor]:
        """Mean input embedding of ``word``'s tokens in each encoder (initialisation)."""
        out = []
        for (te, tk), E in zip(self.pairs, self.embeddings()):
            ids = [i for i in tk(word, add_special_tokens=False)["input_ids"] if i not in set(tk.all_special_ids)]
            out.append(E[torch.tensor(ids or [0])].detach().float().mean(0).clone())
        return out

    @contextlib.contextmanager
    def active(self, vectors: list[torch.Tensor]):
        handles = []
        try:
            for (te, _), ph, vec in zip(self.pairs, self.ids, vectors):
                emb = te.get_input_embeddings()
                v = vec if vec.ndim == 2 else vec[None]

                def fn(mod, args, out, ph=ph, v=v):
                    ids = args[0]
                    mask = ids == ph
                    if not bool(mask.any()):
                        return out
                    occ = (mask.long().cumsum(1) - 1).clamp(min=0) % v.shape[0]
                    rows = v.to(out.dtype)[occ]
                    return torch.where(mask[..., None], rows, out)

                handles.append(emb.register_forward_hook(fn))
            yield self
        finally:
            for h in handles:
                h.remove()


def timed(fn: Callable) -> tuple[object, float]:
    t0 = time.time()
    out = fn()
    return out, time.time() - t0
