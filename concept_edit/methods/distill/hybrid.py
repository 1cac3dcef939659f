"""The hybrid base -> distilled sampler ("Distilling Diversity and Control"), over the core sampler.

Example::

    >>> from concept_edit.methods.distill import hybrid_sample
    >>> res = hybrid_sample(base, turbo, ["a circle"] * 8, seed=0, switch=1,
    ...                     timesteps=[999, 749, 499, 249])       # shared schedule (paper setting)
    >>> res.images, res.base_steps, res.models                    # ('base', 'distilled', ...) per step
    >>> res = hybrid_sample(base, turbo, "a circle", mode="two", switch=1, base_steps=25)

The base model runs the first steps, the distilled model the rest. The switch is ONE of
``switch`` (a step index of the distilled schedule: the number of steps the base runs in the
shared mode), ``switch_timestep`` (the base runs while t > T) or ``switch_sigma`` (while
sigma > S). Modes:

- ``"shared"`` (default, paper-consistent): one run of the distilled pipeline's scheduler over
  its schedule (pass explicit ``timesteps``: DMD2 was trained on 999/749/499/249, which
  LCM's and DDIM's default grids are not); the base denoiser runs steps ``[0, switch)``.
- ``"two"``: the base runs on its own scheduler and grid (``base_steps``), the distilled model on
  its own. The distilled switch step j (timestep t_j) maps to base step
  ``k = argmin_i |t_base[i] - t_j|`` (as the reference does); the base runs steps ``[0, k)``, its
  last step landing exactly on t_j (custom timesteps), and the distilled run resumes at its step j.
  DDPM-family schedulers only (flow schedulers re-shift custom sigmas: use "shared").

A switch at which the base runs no step (or the distilled model none) is an error: that is no
hybrid (the reference's two-scheduler CLI silently never runs the base at its defaults). The pure
runs are explicit: ``allow_pure=True`` lets ``switch=0`` give the distilled model alone and
``switch=len(schedule)`` the base alone, on the same schedule and code path.

The pair must share the latent space, the family and the text encoder (the sampled pipeline
encodes the prompt once for both denoisers); ``check_pair`` says which part differs.
"""
from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import torch
from torch import nn

from ...core import schedule as S
from ...core.backbones import backbone_of
from ...core.model import model_of
from ...core.sampler import Phase, SampleResult, decode, sample
from ...core.sampler_parts import set_timesteps

__all__ = ["hybrid_sample", "HybridResult", "resolve_switch", "map_switch", "run_schedule",
           "check_pair", "decode_x0"]


@dataclasses.dataclass
class HybridResult(SampleResult):
    base_steps: int = 0                                   # steps run by the base denoiser
    models: list = dataclasses.field(default_factory=list)  # 'base' | 'distilled' per step run
    mode: str = "shared"
    seconds: float = 0.0


# -- schedules and switch points ------------------------------------------------------------------
def run_schedule(pipe, steps: int | None = None, timesteps=None, sigmas=None, height=None, width=None):
    """(timesteps, sigma per step) the native sampler will run for ``pipe`` with these settings
    (the pipeline's scheduler is not touched: a copy is set)."""
    data = backbone_of(pipe).sampler
    d = model_of(pipe).defaults
    custom = timesteps if timesteps is not None else sigmas
    steps = len(custom) if custom is not None else (steps or d["steps"])
    height = height or d["size"]
    width = width or height
    sched = copy.deepcopy(pipe.scheduler)
    den = getattr(pipe, backbone_of(pipe).denoiser)
    native = type(sched).__name__ == "DDIMScheduler"
    set_timesteps(pipe, sched, data, den, steps, timesteps, sigmas, height, width, "cpu", native)
    ts = sched.timesteps.detach().cpu()
    lvls = list(sched.sigmas[:len(ts)]) if S.is_flow(sched) else list(ts)
    return ts, [float(S.sigma_of(sched, v)) for v in lvls]


def resolve_switch(ts, sigmas, switch: int | None = None, switch_timestep: float | None = None,
                   switch_sigma: float | None = None) -> int:
    """The step index where the base hands over: ``switch`` itself, the first step whose timestep
    is <= ``switch_timestep``, or whose sigma is <= ``switch_sigma`` (Phase's until_* rule)."""
    given = [v is not None for v in (switch, switch_timestep, switch_sigma)]
    if sum(given) != 1:
        raise ValueError("give exactly one of switch (a step), switch_timestep, switch_sigma")
    n = len(ts)
    if switch is not None:
        k = int(switch)
        if not 0 <= k <= n:
            raise ValueError(f"switch={k} is outside the {n}-step schedule; pick 0..{n}")
        return k
    if switch_timestep is not None:
        return next((i for i in range(n) if float(ts[i]) <= switch_timestep), n)
    return next((i for i in range(n) if sigmas[i] <= switch_sigma), n)


def map_switch(base_ts, distilled_ts, j: int) -> int:
    """Two-scheduler mode: distilled step j -> the number of base steps,
    ``argmin_i |t_base[i] - t_distilled[j]|`` (ties: the earlier base step)."""
    if not 0 <= j < len(distilled_ts):
        raise ValueError(f"distilled switch step {j} is outside its {len(distilled_ts)} steps")
    b = torch.as_tensor(base_ts, dtype=torch.float64)
    return int((b - float(distilled_ts[j])).abs().argmin())


def _zero_error(what: str) -> ValueError:
    return ValueError(f"{what}: the base would run no step, so this is no hybrid; pick a later "
                      "switch, or pass allow_pure=True (CLI --allow-pure) for the distilled model alone")


def _check_ends(k: int, n: int, allow_pure: bool, what: str) -> None:
    if k == 0 and not allow_pure:
        raise _zero_error(what)
    if k >= n and not allow_pure:
        raise ValueError(f"{what}: the distilled model would run no step (the schedule has {n}); "
                         "pick an earlier switch, or pass allow_pure=True for the base alone")


# -- the pair ---------------------------------------------------------------------------------------
def _fingerprint(module: nn.Module, k: int = 3) -> list:
    ps = list(module.parameters())
    pick = ps[:k] + ps[-k:]
    return [(tuple(p.shape), float(p.detach().float().sum()), float(p.detach().float().abs().sum())) for p in pick]


def _config(module: nn.Module) -> dict:
    return {k: v for k, v in dict(module.config).items() if not k.startswith("_")}


def check_pair(base, distilled) -> None:
    """ValueError unless the two pipelines share family, latent space (VAE) and text encoders."""
    fb, fd = backbone_of(base).name, backbone_of(distilled).name
    if fb != fd:
        raise ValueError(f"the base is a {fb} model and the distilled one a {fd} model: a hybrid needs "
                         "one family (one latent space)")
    if base.vae is not distilled.vae and (_config(base.vae) != _config(distilled.vae)
                                          or _fingerprint(base.vae) != _fingerprint(distilled.vae)):
        raise ValueError("the base and distilled pipelines have different VAEs: their latents differ; "
                         "build the distilled pipeline with the base's VAE")
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        a, b = getattr(base, name, None), getattr(distilled, name, None)
        if a is None or b is None or a is b:
            continue
        if _fingerprint(a) != _fingerprint(b):
            raise ValueError(f"the base and distilled pipelines have different {name}s; the prompt is "
                             "encoded once for both: build the distilled pipeline with the base's")


class _Halt(nn.Module):
    """A free stand-in denoiser for a step whose output is thrown away (zero prediction)."""

    def __init__(self, like: nn.Module):
        super().__init__()
        self.config = like.config
        self.dtype, self.device = like.dtype, like.device

    def forward(self, *args, **kw):
        x = args[0] if args else next(v for k, v in kw.items() if k in ("sample", "hidden_states"))
        return (torch.zeros_like(x),)


# -- the sampler ----------------------------------------------------------------------------------
def hybrid_sample(base, distilled, prompts, *, switch: int | None = None,
                  switch_timestep: float | None = None, switch_sigma: float | None = None,
                  mode: str = "shared", seed: int | list[int] = 0, steps: int | None = None,
                  timesteps=None, sigmas=None, base_steps: int | None = None,
                  base_guidance: float | None = None, distilled_guidance: float | None = None,
                  height: int | None = None, width: int | None = None, allow_pure: bool = False,
                  return_x0: bool = False, output_type: str = "np", progress: bool = False,
                  check: bool = True) -> HybridResult:
    """Base until the switch, distilled after; see the module docstring. ``steps`` / ``timesteps``
    / ``sigmas``: the distilled schedule (default: the distilled model's steps); ``base_steps``:
    the base grid in mode "two" (default: the base model's steps). Guidance per phase defaults to
    each model's own default. Image i comes from ``seed + i`` as in ``sample``."""
    if mode not in ("shared", "two"):
        raise ValueError(f"mode {mode!r}: choose 'shared' (one scheduler) or 'two' (two schedulers)")
    if switch is None and switch_timestep is None and switch_sigma is None:
        switch = 1
    if check:
        check_pair(base, distilled)
    gb = model_of(base).defaults["guidance"] if base_guidance is None else base_guidance
    gd = model_of(distilled).defaults["guidance"] if distilled_guidance is None else distilled_guidance
    common = dict(seed=seed, height=height, width=width, return_x0=return_x0)
    ts, sig = run_schedule(distilled, steps, timesteps, sigmas, height, width)
    n = len(ts)
    j = resolve_switch(ts, sig, switch, switch_timestep, switch_sigma)
    what = (f"switch step {j} of the {n}-step distilled schedule"
            + (f" (timestep {float(ts[j]):.0f})" if j < n else ""))
    t0 = time.perf_counter()
    if mode == "shared":
        _check_ends(j, n, allow_pure, what)
        sched = dict(steps=steps, timesteps=timesteps, sigmas=sigmas)
        if j == 0:
            res = sample(distilled, prompts, guidance=gd, output_type=output_type, progress=progress,
                         **sched, **common)
        else:
            phases = [Phase(until_step=j, denoiser=base, guidance=gb)]
            if j < n:
                phases.append(Phase(guidance=gd))
            else:
                phases = [Phase(denoiser=base, guidance=gb)]
            res = sample(distilled, prompts, phases=phases, guidance=gd, output_type=output_type,
                         progress=progress, **sched, **common)
        out = HybridResult(**vars(res), base_steps=min(j, n),
                           models=["base"] * min(j, n) + ["distilled"] * (n - min(j, n)), mode=mode)
        out.seconds = time.perf_counter() - t0
        return out
    return _two(base, distilled, prompts, ts, sig, j, n, what, gb, gd, steps, timesteps, sigmas,
                base_steps, height, width, allow_pure, output_type, progress, common, t0)


def _two(base, distilled, prompts, ts, sig, j, n, what, gb, gd, steps, timesteps, sigmas, base_steps,
         height, width, allow_pure, output_type, progress, common, t0) -> HybridResult:
    if S.is_flow(base.scheduler) or S.is_flow(distilled.scheduler):
        raise ValueError("mode 'two' needs DDPM-family schedulers (flow schedulers re-shift custom "
                         "sigmas): use mode 'shared' for flow-matching models")
    if j >= n:
        if not allow_pure:
            _check_ends(j, n, False, what)
        res = sample(base, prompts, steps=base_steps, guidance=gb, output_type=output_type,
                     progress=progress, **common)
        nb = len(res.timesteps)
        return HybridResult(**vars(res), base_steps=nb, models=["base"] * nb, mode="two",
                            seconds=time.perf_counter() - t0)
    bts, _ = run_schedule(base, base_steps, None, None, height, width)
    k = 0 if j == 0 else map_switch(bts, ts, j)
    if k == 0:
        if not allow_pure:
            raise _zero_error(f"{what} maps to base step 0 of {len(bts)} (argmin |t_base - "
                              f"{float(ts[j]):.0f}| is t_base={float(bts[0]):.0f})")
        res = sample(distilled, prompts, steps=steps, timesteps=timesteps, sigmas=sigmas, guidance=gd,
                     output_type=output_type, progress=progress, **common)
        return HybridResult(**vars(res), base_steps=0, models=["distilled"] * n, mode="two",
                            seconds=time.perf_counter() - t0)
    # leg 1: the base's grid up to step k, its last step landing on t_j; a free halt step after it
    tj = int(ts[j])
    custom = [int(t) for t in bts[:k]] + [tj]
    if any(a <= b for a, b in zip(custom, custom[1:])):
        raise ValueError(f"{what}: the base grid {custom} is not decreasing at the switch; pick "
                         "another switch or base_steps")
    den = getattr(base, backbone_of(base).denoiser)
    leg1 = sample(base, prompts, timesteps=custom, guidance=gb, output_type="latent",
                  phases=[Phase(until_step=k, guidance=gb), Phase(denoiser=_Halt(den), guidance=gb)],
                  return_states=True, progress=progress, **{**common, "return_x0": True})
    x = leg1.states[k]
    x = x / S._coef(S.state_scale(base.scheduler, tj), x) * S._coef(S.state_scale(distilled.scheduler, tj), x)
    leg2 = sample(distilled, prompts, steps=steps, timesteps=timesteps, sigmas=sigmas, guidance=gd,
                  start_latents=x, start_step=j, output_type=output_type, progress=progress, **common)
    out = HybridResult(leg2.images, leg2.latents,
                       (leg1.x0[:k] + leg2.x0) if common["return_x0"] else [],
                       torch.cat([leg1.timesteps[:k], leg2.timesteps]), [], base_steps=k,
                       models=["base"] * k + ["distilled"] * (n - j), mode="two")
    out.seconds = time.perf_counter() - t0
    return out


# -- x0-hat -----------------------------------------------------------------------------------------
def decode_x0(pipe, res: SampleResult, height: int | None = None, width: int | None = None) -> np.ndarray:
    """(steps, N, H, W, 3) floats in [0, 1]: the decoded x0-hat of every step of a run made with
    ``return_x0=True``."""
    if not res.x0:
        raise ValueError("the run holds no x0-hat: sample with return_x0=True")
    d = model_of(pipe).defaults
    h = height or d["size"]
    return np.stack([decode(pipe, z, h, width or h) for z in res.x0])
