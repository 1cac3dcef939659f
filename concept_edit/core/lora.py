"""LoRA routing over peft: named adapters on site groups, scales, per-step schedules.

Example::

    >>> from concept_edit.core.lora import lora_router
    >>> router = lora_router(pipe)                          # one per denoiser
    >>> router.add("size", resolve_sites(pipe, "noxattn"), rank=4, alpha=1.0)
    >>> router.set_scale("size", 2.0)
    >>> router.set_schedule("size", start=0.2)              # 0 for the first 20% of steps, then 2.0
    >>> with router.disabled():                             # exactly the base model
    ...     pipe(prompt)
    >>> sd = router.state_dict("size")                      # diffusers keys, alpha/r baked into B

Adapters are injected with ``peft.inject_adapter_in_model`` on the denoiser, so every family
(PixArt included) is handled alike. Files store ``lora_B`` pre-multiplied by alpha/rank, so any
loader that assumes alpha = rank (diffusers, ComfyUI with our kohya export) gets the same output.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from typing import Callable

import torch
from torch import nn

from .hooks import hooks
from .paths import get_module

_ATTR = "_concept_edit_lora"
_SCHEDULE_HOOK = "concept_edit:lora-schedule"
_MERGE_HOOK = "concept_edit:lora-merge"


@dataclasses.dataclass
class Adapter:
    name: str
    paths: list[str]
    rank: int
    alpha: float
    scale: float = 1.0
    schedule: Callable[[int, int], float] | None = None


def start_schedule(start: float, stop: float = 1.0) -> Callable[[int, int], float]:
    """0 for the first ``start`` fraction of the denoising steps, 1 after, and 0 again from the
    ``stop`` fraction on (default 1: on to the last step)."""
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"slider start must be a fraction in [0, 1], got {start}")
    if stop != 1.0 and not start < stop <= 1.0:
        raise ValueError(f"slider stop must be a fraction in (start, 1], got {stop} (start {start})")
    return lambda i, n: 1.0 if round(start * n) <= i < round(stop * n) else 0.0


def recommended_schedule(meta: dict, start: float | None = None) -> Callable[[int, int], float] | None:
    """The step window an artifact's metadata recommends (``lora.start`` / ``lora.stop``; ``start``
    overrides the file's; a stop at or before the start is ignored); None = every step."""
    lora = meta.get("lora") if isinstance(meta.get("lora"), dict) else {}
    start = float(lora.get("start", 0.0) or 0.0) if start is None else float(start)
    stop = float(lora.get("stop", 1.0) or 1.0)
    stop = stop if stop > start else 1.0
    return start_schedule(start, stop) if start > 0 or stop < 1 else None


class LoraRouter:
    def __init__(self, denoiser: nn.Module, timestep_scale: float = 1.0):
        self.denoiser = denoiser
        self.timestep_scale = timestep_scale
        self.scheduler = None
        self.adapters: dict[str, Adapter] = {}
        self.step: tuple[int, int] | None = None  # (index, count) of the current denoising step
        self._off = False       # inside disabled()
        self._layers: list | None = None  # cached (path, LoraLayer) pairs
        self._applied: dict | None = None  # effective scales last written into the layers
        self._merge: dict | None = None  # inside merged(): {"saved": W0 by path, "scales": folded}

    # -- structure -------------------------------------------------------------------------
    def layers(self, name: str | None = None):
        from peft.tuners.lora import LoraLayer

        if self._layers is None:  # one walk of the model per structural change, not per step
            self._layers = [(p, m) for p, m in self.denoiser.named_modules() if isinstance(m, LoraLayer)]
        if name is None:
            yield from self._layers
            return
        paths = set(self.adapters[name].paths)
        for p, m in self._layers:
            if p in paths:
                yield p, m

    def add(self, name: str, paths: list[str], rank: int = 4, alpha: float = 1.0,
            init: str | bool = "gaussian", conv_rank: int | None = None) -> Adapter:
        """Inject a new adapter on ``paths`` (module paths from the site tables)."""
        from peft import LoraConfig, inject_adapter_in_model

        self._unmerge()
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} exists; remove it first or pick another name")
        if not paths:
            raise ValueError(f"adapter {name!r}: the site group selected no layers in this model")
        rank_pattern = {}
        if conv_rank:
            for p in paths:
                if isinstance(get_module(self.denoiser, p), nn.Conv2d):
                    rank_pattern[f"^{re.escape(p)}$"] = conv_rank
        # a full-match regex: a list would also match any module whose path merely ends with
        # one of ours (top-level 'proj_out' vs 'single_transformer_blocks.0.proj_out')
        target = "^(?:" + "|".join(re.escape(p) for p in paths) + ")$"
        cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target,
                         init_lora_weights=init, rank_pattern=rank_pattern,
                         alpha_pattern={k: alpha for k in rank_pattern})
        frozen = {n for n, p in self.denoiser.named_parameters() if not p.requires_grad}
        with warnings.catch_warnings():  # peft warns about several adapters: that is the point
            warnings.simplefilter("ignore")
            inject_adapter_in_model(cfg, self.denoiser, adapter_name=name)
        self._layers, self._applied = None, None
        for n, p in self.denoiser.named_parameters():  # peft may flip flags: only ours trainable
            if n in frozen or f".{name}." not in n:
                p.requires_grad_(False)
            else:
                p.requires_grad_(True)
        ad = Adapter(name, list(paths), rank, alpha)
        self.adapters[name] = ad
        self._activate()
        return ad

    def remove(self, name: str) -> None:
        """Delete an adapter; layers left without adapters are unwrapped to the original module."""
        from .paths import set_module

        self._get(name)
        self._unmerge()
        for path, layer in list(self.layers(name)):
            layer.delete_adapter(name)
            if not layer.lora_A:
                set_module(self.denoiser, path, layer.get_base_layer())
        del self.adapters[name]
        self._layers, self._applied = None, None
        self._activate()
        self._sync_schedule_hook()

    def _get(self, name: str) -> Adapter:
        if name not in self.adapters:
            raise KeyError(f"no adapter {name!r}; have: {', '.join(self.adapters) or 'none'}")
        return self.adapters[name]

    def _activate(self) -> None:
        for _, layer in self.layers():
            names = [n for n in self.adapters if n in layer.lora_A]
            layer._active_adapter = names
        self._apply_scales()

    def parameters(self, name: str, which: str = "AB") -> list[torch.nn.Parameter]:
        out = []
        for _, layer in self.layers(name):
            if "A" in which:
                out += list(layer.lora_A[name].parameters())
            if "B" in which:
                out += list(layer.lora_B[name].parameters())
        return out

    # -- scales ----------------------------------------------------------------------------
    def set_scale(self, name: str, scale: float) -> None:
        self._get(name).scale = float(scale)
        self._apply_scales()

    def set_schedule(self, name: str, fn: Callable[[int, int], float] | None = None,
                     start: float | None = None, stop: float = 1.0) -> None:
        """Per-step multiplier of the adapter's scale; ``start=F`` is 0 before fraction F (and
        from fraction ``stop`` on)."""
        self._get(name).schedule = start_schedule(start, stop) if start is not None else fn
        self._sync_schedule_hook()

    def _effective(self, ad: Adapter) -> float:
        if ad.schedule is None or self.step is None:
            return ad.scale
        return ad.scale * ad.schedule(*self.step)

    def _apply_scales(self, force: bool = True) -> None:
        eff = {ad.name: self._effective(ad) for ad in self.adapters.values()}
        if not force and eff == self._applied:
            return
        for ad in self.adapters.values():
            for _, layer in self.layers(ad.name):
                layer.scaling[ad.name] = eff[ad.name] * layer.lora_alpha[ad.name] / layer.r[ad.name]
        self._applied = eff

    def bind(self, scheduler) -> "LoraRouter":
        """Use ``scheduler.timesteps`` to know the step index during a pipeline call."""
        self.scheduler = scheduler
        return self

    def _sync_schedule_hook(self) -> None:
        reg = hooks(self.denoiser)
        need = any(ad.schedule is not None for ad in self.adapters.values())
        have = _SCHEDULE_HOOK in reg.names()
        if need and not have:
            reg.add(_SCHEDULE_HOOK, "", pre=self._on_forward)
        elif have and not need:
            reg.remove(_SCHEDULE_HOOK)
            self.step = None
            self._apply_scales()

    def _on_forward(self, args, kwargs, path):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if t is None or self.scheduler is None or getattr(self.scheduler, "timesteps", None) is None:
            return None
        t = float(torch.as_tensor(t).flatten()[0]) * self.timestep_scale
        ts = self.scheduler.timesteps.float().cpu()
        i = int((ts - t).abs().argmin())
        self.step = (i, len(ts))
        self._apply_scales(force=False)
        return None

    @contextlib.contextmanager
    def disabled(self):
        """Every adapter off: the base model's outputs exactly."""
        layers = [layer for _, layer in self.layers()]
        old = [layer._disable_adapters for layer in layers]
        old_off, self._off = self._off, True
        for layer in layers:
            layer._disable_adapters = True
        try:
            yield
        finally:
            self._off = old_off
            for layer, o in zip(layers, old):
                layer._disable_adapters = o

    @contextlib.contextmanager
    def scaled(self, **scales: float):
        """Temporarily set adapter scales, e.g. ``with router.scaled(size=0.0):``."""
        old = {n: self._get(n).scale for n in scales}
        for n, s in scales.items():
            self.adapters[n].scale = float(s)
        self._apply_scales()
        try:
            yield
        finally:
            for n, s in old.items():
                self.adapters[n].scale = s
            self._apply_scales()

    # -- merged inference --------------------------------------------------------------------
    @contextlib.contextmanager
    def merged(self):
        """Inference with the adapters folded into the base weights at their current scales.

        Per-step schedules still hold: the weights are re-folded (from a saved copy of the
        originals, so nothing drifts) only when an effective scale changes, e.g. once at a
        slider's start step, and every forward then costs what the base model costs. Forwards
        with gradients enabled (training) fall back to the unmerged adapters; leaving the block
        restores the original weights exactly. ``generate`` and the toy-world samplers use it.
        """
        if self._merge is not None:  # nested: the outer block owns the state
            yield self
            return
        self._merge = {"saved": {}, "scales": (), "quiet": False}
        hooks(self.denoiser).add(_MERGE_HOOK, "", pre=self._merge_pre)
        try:
            yield self
        finally:
            hooks(self.denoiser).remove(_MERGE_HOOK)
            self._unmerge()
            self._merge = None

    def _merge_pre(self, args, kwargs, path):
        if torch.is_grad_enabled():
            self._unmerge()
            return None
        self._on_forward(args, kwargs, path)
        m = self._merge
        want = () if self._off else tuple(
            (ad.name, self._effective(ad)) for ad in self.adapters.values() if self._effective(ad) != 0.0)
        if want != m["scales"]:
            self._unmerge()
            if want:
                self._fold(want)
        if not m["quiet"]:  # the (folded or untouched) base layers alone: no branches to compute
            for _, layer in self.layers():
                layer._disable_adapters = True
                layer.forward = layer.get_base_layer().__call__  # skip peft's per-call dispatch too
            m["quiet"] = True
        return None

    @torch.no_grad()
    def _fold(self, want) -> None:
        saved = self._merge["saved"]
        names = [n for n, _ in want]
        for p, layer in self.layers():
            base = layer.get_base_layer()
            if p not in saved:
                saved[p] = base.weight.detach().clone()
            delta = sum(layer.get_delta_weight(n).float() for n in names if n in layer.lora_A)
            if isinstance(delta, torch.Tensor):
                base.weight.copy_((saved[p].float() + delta).to(base.weight.dtype))
            layer._disable_adapters = True  # the folded weights carry the adapters
        self._merge["scales"] = want

    @torch.no_grad()
    def _unmerge(self) -> None:
        m = self._merge
        if not m or not (m["scales"] or m["quiet"]):
            return
        for p, layer in self.layers():
            if p in m["saved"]:
                layer.get_base_layer().weight.copy_(m["saved"][p])
            layer._disable_adapters = self._off
            layer.__dict__.pop("forward", None)  # peft's forward again
        m["scales"], m["saved"], m["quiet"] = (), {}, False  # re-read W0 on the next fold

    # -- files -----------------------------------------------------------------------------
    def state_dict(self, name: str, prefix: str) -> dict[str, torch.Tensor]:
        """diffusers/peft keys ``{prefix}.{path}.lora_A.weight``; alpha/r folded into lora_B."""
        out = {}
        for p, layer in self.layers(name):
            a = layer.lora_A[name].weight.detach().float()
            b = layer.lora_B[name].weight.detach().float() * (layer.lora_alpha[name] / layer.r[name])
            out[f"{prefix}.{p}.lora_A.weight"] = a.contiguous()
            out[f"{prefix}.{p}.lora_B.weight"] = b.contiguous()
        return out

    def load(self, name: str, state_dict: dict[str, torch.Tensor], prefix: str) -> Adapter:
        """Add adapter ``name`` from a state dict written by ``state_dict`` (or diffusers)."""
        pat = re.compile(rf"^{re.escape(prefix)}\.(.+)\.lora_([AB])\.weight$")
        weights: dict[str, dict[str, torch.Tensor]] = {}
        for k, v in state_dict.items():
            m = pat.match(k)
            if m:
                weights.setdefault(m.group(1), {})[m.group(2)] = v
        if not weights:
            raise ValueError(f"no '{prefix}.*.lora_A.weight' keys: not a LoRA for this model's {prefix}")
        for p in weights:
            get_module(self.denoiser, p)  # clear error naming nearest paths if the base differs
        ranks = {p: w["A"].shape[0] for p, w in weights.items()}
        rank = max(ranks.values())
        conv_rank = next((r for p, r in ranks.items() if weights[p]["A"].ndim == 4), None)
        ad = self.add(name, list(weights), rank=rank, alpha=float(rank), init=False,
                      conv_rank=conv_rank if conv_rank != rank else None)
        for p, layer in self.layers(name):
            w = weights[p]
            la, lb = layer.lora_A[name].weight, layer.lora_B[name].weight
            if la.shape != w["A"].shape or lb.shape != w["B"].shape:
                raise ValueError(f"{p}: LoRA shapes {tuple(w['A'].shape)}/{tuple(w['B'].shape)} do not "
                                 f"fit this model ({tuple(la.shape)}/{tuple(lb.shape)}): wrong base model")
            layer.r[name] = w["A"].shape[0]
            layer.lora_alpha[name] = float(w["A"].shape[0])
            with torch.no_grad():
                la.copy_(w["A"])
                lb.copy_(w["B"])
            layer.lora_A[name].requires_grad_(False)
            layer.lora_B[name].requires_grad_(False)
        self._apply_scales()
        return ad

    @torch.no_grad()
    def fuse(self, name: str) -> dict[str, torch.Tensor]:
        """Merge adapter ``name`` at its scale into the base weights and drop it (no per-step
        schedule then). Returns the original weights: ``assign(denoiser, saved)`` unfuses."""
        from .weights import snapshot

        ad = self._get(name)
        self._unmerge()
        saved = snapshot(self.denoiser, [f"{p}.weight" for p in ad.paths])
        for _, layer in self.layers(name):
            layer.scaling[name] = ad.scale * layer.lora_alpha[name] / layer.r[name]
            base = layer.get_base_layer()
            base.weight.add_(layer.get_delta_weight(name).to(base.weight.dtype))
        self.remove(name)
        return saved


def inference_merge(pipe_or_denoiser):
    """``router.merged()`` when the denoiser carries adapters, else a no-op context."""
    den = pipe_or_denoiser
    if not isinstance(den, nn.Module):
        from .families import detect_family, get_family

        den = getattr(den, get_family(detect_family(den)).denoiser)
    router = den.__dict__.get(_ATTR)
    return router.merged() if router is not None and router.adapters else contextlib.nullcontext()


def lora_router(pipe_or_denoiser, timestep_scale: float | None = None) -> LoraRouter:
    """The router of a pipeline's denoiser (created on first use and bound to its scheduler)."""
    if isinstance(pipe_or_denoiser, nn.Module):
        den, sched, ts = pipe_or_denoiser, None, timestep_scale or 1.0
    else:
        from .families import detect_family, get_family

        fam = get_family(detect_family(pipe_or_denoiser))
        den, sched, ts = getattr(pipe_or_denoiser, fam.denoiser), pipe_or_denoiser.scheduler, fam.timestep_scale
    router = den.__dict__.get(_ATTR)
    if router is None:
        router = LoraRouter(den, ts)
        den.__dict__[_ATTR] = router
    if sched is not None:
        router.bind(sched)
    return router
