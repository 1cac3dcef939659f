"""A native sampling loop for every family: same images as ``pipe(...)``, plus the hooks the
methods need (phases, paste-back masks, guidance functions, x0-hat with gradients, DDIM eta > 1).

Example::

    >>> from concept_edit.core.sampler import sample, Phase
    >>> res = sample(pipe, ["a red circle"] * 2, seed=0, steps=20, guidance=5.0)
    >>> res.images.shape                    # (2, H, W, 3) floats in [0, 1]; image i from seed + i
    >>> res = sample(pipe, "a red circle", return_x0=True,
    ...              phases=[Phase(until_step=5, denoiser=base_pipe), Phase(adapter_scales={"size": 2.0})])
    >>> len(res.x0) == len(res.timesteps)   # one x0-hat per step, latents as the pipeline holds them

Without phases, masks, guidance_fn or eta, ``sample`` reproduces ``pipe(prompts, generator=[
torch.Generator(device).manual_seed(seed + i) ...], ...)``: the same text encodings, initial
latents (``pipe.prepare_latents``), timesteps, denoiser inputs and scheduler steps. Family
differences are backbone data (``core/backbones``: ``Backbone.sampler``). Latents are in
the pipeline's form (FLUX: packed tokens); 4-D latents given for FLUX are packed here. DDIM
schedulers are stepped by ``schedule.ddim_step`` (eta > 1 allowed; the previous level is the stock
scheduler's, or the next timestep of a custom ``timesteps`` list); every other scheduler by its
own ``step``. x0-hat comes from ``schedule.x0_from_output`` (the noise maths live there).
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from . import schedule as S
from .denoise import Denoiser
from .backbones import backbone_of
from .lora import inference_merge
from .x0 import active_capture
from .sampler_parts import (Phase, adapter_scales, bind_routers, denoiser_kwargs, mask_to_latents,
                            phase_denoiser, plan_phases, set_timesteps, start_index, to_pipeline_form)

__all__ = ["sample", "decode", "Phase", "SampleResult"]

_NATIVE_DDIM = ("DDIMScheduler",)  # schedulers stepped by schedule.ddim_step


@dataclasses.dataclass
class SampleResult:
    images: np.ndarray | None        # (N, H, W, 3) float in [0, 1] when output_type='np'
    latents: torch.Tensor            # final latents (pipeline form)
    x0: list[torch.Tensor]           # x0-hat per step run (return_x0 / x0_grad), pipeline form
    timesteps: torch.Tensor          # scheduler timesteps of the steps run
    states: list[torch.Tensor] = dataclasses.field(default_factory=list)  # x_t before each step


def decode_tensor(pipe, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pipeline-form latents -> images in [-1, 1] (N, 3, H, W), differentiable (VAE scaling,
    shift and per-channel statistics undone; packed DiT latents unpacked)."""
    vae, z = pipe.vae, backbone_of(pipe).unpack(pipe, latents, height, width)
    cfg = vae.config
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        view = (1, -1, 1, 1)
        z = z * torch.tensor(std).view(view).to(z) / cfg.scaling_factor + torch.tensor(mean).view(view).to(z)
    else:
        z = z / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
    return vae.decode(z.to(vae.dtype), return_dict=False)[0]


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, height: int, width: int) -> np.ndarray:
    """``decode(pipe, res.x0[-1], 64, 64)``: pipeline-form latents -> (N, H, W, 3) floats in
    [0, 1], as ``pipe(output_type='np')`` decodes them."""
    img = decode_tensor(pipe, latents, height, width)
    return pipe.image_processor.postprocess(img.detach(), output_type="np")


def sample(pipe, prompts: str | list[str], *, seed: int | list[int] = 0, generator: list | None = None,
           latents: torch.Tensor | None = None, steps: int | None = None, guidance: float | None = None,
           height: int | None = None, width: int | None = None,
           negative_prompt: str | list[str] | None = None, true_cfg: float = 1.0,
           timesteps: list | None = None, sigmas: list | None = None,
           phases: list[Phase] | None = None, start_latents: torch.Tensor | None = None,
           start_step: int | None = None, start_timestep: float | None = None, noise_start: bool = False,
           mask: torch.Tensor | None = None, mask_latents: torch.Tensor | None = None,
           guidance_fn: Callable | None = None, eta: float = 0.0, return_x0: bool = False,
           x0_grad: bool = False, return_states: bool = False, output_type: str = "np",
           guidance_below: float | None = None, progress: bool = False) -> SampleResult:
    """``sample(pipe, ["a cat", "a dog"], seed=0, steps=20).images`` -> (2, H, W, 3) in [0, 1].

    Image i comes from ``seed + i`` (or ``seed[i]``, ``generator[i]``, or the initial ``latents``
    as ``pipe(latents=...)`` takes them). ``timesteps`` / ``sigmas``: a custom schedule (DDIM takes
    any decreasing timesteps). ``phases``: see ``sampler_parts.Phase``. ``start_latents`` (the
    state before ``start_step``; clean latents noised there with the seeded noise when
    ``noise_start``) resumes a run part-way; ``start_timestep=T`` starts at the first step whose
    timestep is <= T. ``mask`` (1 = generate, 0 = keep; any resolution, (N|1, 1, h, w)) with
    ``mask_latents``: outside the mask the latents are ``mask_latents`` noised to the current
    level, clean at the end. ``guidance_fn(x_t, t, x0_hat, pred)`` returns a tensor added to the
    guided prediction (autograd on; with ``x0_grad`` x0_hat carries the denoiser's graph and x_t
    requires grad). ``eta``: DDIM stochasticity (DDIM schedulers only). FLUX guidance is the
    embedded guidance; ``true_cfg > 1`` with a ``negative_prompt`` adds true CFG. ``x0_grad``:
    autograd through the whole run (x0-hat, latents) instead of ``torch.no_grad()``.
    ``guidance_below=f`` (a guidance interval, Kynkaenniemi et al. 2024): without ``phases``, the
    steps whose timestep is above ``f`` of the training range run unguided, and guidance starts
    below it; guidance at the highest noise levels pushes unnamed attributes to one mode. Default:
    the model's ``concept_edit.json`` ``guidance_below``, else 1 (every step guided, as ``pipe()``).
    """
    with torch.set_grad_enabled(x0_grad):
        return _sample(**locals())


def guidance_interval(ts, k0: int, t_max: float) -> list[Phase]:
    """The steps whose timestep is above ``t_max`` unguided, the rest guided (one phase when
    either part is empty)."""
    late = [float(t) <= t_max for t in ts[k0:]]
    if late[0]:
        return [Phase()]
    if not any(late):
        return [Phase(guidance=1.0)]
    return [Phase(until_timestep=t_max, guidance=1.0), Phase()]


def _sample(pipe, prompts, *, seed, generator, latents, steps, guidance, height, width, negative_prompt,
            true_cfg, timesteps, sigmas, phases, start_latents, start_step, start_timestep, noise_start,
            mask, mask_latents, guidance_fn, eta, return_x0, x0_grad, return_states, output_type,
            guidance_below, progress):
    from .model import model_of

    fam = backbone_of(pipe)
    data = fam.sampler
    d = dict(model_of(pipe).defaults)
    custom = timesteps if timesteps is not None else sigmas
    steps = len(custom) if custom is not None else (steps or d["steps"])
    guidance = d["guidance"] if guidance is None else guidance
    height = height or d["size"]
    width = width or height
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    n = len(prompts)
    if output_type not in ("np", "latent"):
        raise ValueError(f"output_type {output_type!r}: choose 'np' or 'latent'")
    if (mask is None) != (mask_latents is None):
        raise ValueError("mask paste-back needs both mask= and mask_latents=; pass both or neither")
    sched = pipe.scheduler
    native = type(sched).__name__ in _NATIVE_DDIM
    step_params = set(inspect.signature(sched.step).parameters)
    if eta and not native and "eta" not in step_params:
        raise ValueError(f"eta={eta} needs a DDIM scheduler and {type(sched).__name__} has none "
                         "(flow matching has no eta): use eta=0 or a DDIMScheduler")
    dn = Denoiser(pipe)
    den0 = dn.module
    if getattr(den0.config, "time_cond_proj_dim", None) is not None:
        raise ValueError("guidance-embedded UNets (LCM) are not supported by sample(): call pipe(...)")
    device = getattr(pipe, "_execution_device", den0.device)

    # -- text, timesteps, initial latents --------------------------------------------------------
    cond = dn.encode(prompts)
    neg = [negative_prompt] * n if isinstance(negative_prompt, str) else negative_prompt
    if neg is not None and len(neg) != n:
        raise ValueError(f"{len(neg)} negative prompts for {n} prompts: give one per prompt or a string")
    batch_cfg = data["cfg"] == "batch"
    if not batch_cfg and neg is not None and true_cfg <= 1.0:
        raise ValueError(f"{fam.name} ignores negative_prompt unless true CFG is on: pass true_cfg > 1")
    set_timesteps(pipe, sched, data, den0, steps, timesteps, sigmas, height, width, device, native)
    ts = sched.timesteps
    N = len(ts)
    lvls = list(sched.sigmas[:N]) if S.is_flow(sched) else list(ts)  # t_or_sigma of each step
    gens = generator
    if gens is None and latents is None:
        seeds = [seed + i for i in range(n)] if isinstance(seed, int) else list(seed)
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} prompts: give one seed per prompt or an int")
        gens = [torch.Generator(device).manual_seed(s) for s in seeds]
    x = pipe.prepare_latents(n, den0.config.in_channels // data["channel_div"], height, width,
                             cond["encoder_hidden_states"].dtype, device, gens,
                             None if latents is None else to_pipeline_form(pipe, data, latents))
    x = x[0] if isinstance(x, tuple) else x  # FLUX also returns its image ids
    noise = x / float(getattr(sched, "init_noise_sigma", 1.0))
    k0 = start_index(ts, start_step, start_timestep)
    if start_latents is not None:
        z = to_pipeline_form(pipe, data, start_latents).to(device, x.dtype)
        x = S.noisy_state(sched, z, noise, lvls[k0]) if noise_start else z
    elif k0:
        raise ValueError(f"starting at step {k0} needs start_latents= (the state there, or clean "
                         "latents with noise_start=True)")
    if mask is not None:
        m = mask_to_latents(pipe, data, mask, x, height, width)
        ref = to_pipeline_form(pipe, data, mask_latents).to(x)
        x = m * x + (1 - m) * S.noisy_state(sched, ref, noise, lvls[k0])
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(k0)

    # -- phases: denoiser, guidance and CFG per step -----------------------------------------------
    if phases and guidance_below is not None and guidance_below < 1:
        raise ValueError("guidance_below applies without phases: give each phase its guidance instead")
    below = d.get("guidance_below", 1.0) if guidance_below is None else guidance_below
    if not 0 < below <= 1:
        raise ValueError(f"guidance_below={below}: give a fraction of the timestep range in (0, 1] (1: every step guided)")
    phases = phases or guidance_interval(ts, k0, below * sched.config.num_train_timesteps)
    plan = plan_phases(phases, ts, [float(S.sigma_of(sched, v)) for v in lvls], k0)
    owner = {i: j for j, (_, a, b) in enumerate(plan) for i in range(a, b)}
    dens = [phase_denoiser(fam, p.denoiser) or den0 for p, _, _ in plan]
    gs = [guidance if p.guidance is None else p.guidance for p, _, _ in plan]
    scale = gs if batch_cfg else [true_cfg] * len(plan)  # the CFG mix of [uncond; cond]
    do_cfg = [c > 1.0 and (batch_cfg or neg is not None) for c in scale]
    uncond = dn.encode(neg or [""] * n, empty_is_uncond=neg is None) if any(do_cfg) else None
    kws = [denoiser_kwargs(pipe, data, dd, cond, uncond if c else None, n, height, width, g, device)
           for dd, c, g in zip(dens, do_cfg, gs)]
    extra_step = {"generator": gens} if "generator" in step_params and gens is not None else {}
    if eta and not native:
        extra_step["eta"] = eta
    one_step_x0 = N == 1 and data["one_step_x0"]

    # -- the loop ----------------------------------------------------------------------------------
    res = SampleResult(None, x, [], ts[k0:].detach().cpu())
    cap = active_capture(pipe)
    with contextlib.ExitStack() as stack:
        if cap is not None:
            stack.enter_context(cap.native())
        stack.enter_context(bind_routers(set(dens), sched))
        for dd in set(dens) if not x0_grad else ():
            stack.enter_context(inference_merge(dd))  # sliders folded in between scale changes
        phase = stack.enter_context(contextlib.ExitStack())
        for i in tqdm(range(k0, N), desc="sample", disable=not progress, leave=False):
            j, t = owner[i], ts[i]
            if i == plan[j][1]:  # a phase starts: its adapter scales hold until it ends
                phase.close()
                phase.enter_context(adapter_scales(dens[j], plan[j][0].adapter_scales))
            if return_states:
                res.states.append(x.detach().clone())
            if guidance_fn is not None and x0_grad and not x.requires_grad:
                x = x.detach().requires_grad_(True)
            x_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
            pred = _predict(fam, dens[j], x_in, t, kws[j], do_cfg[j], scale[j])
            x0 = S.x0_from_output(sched, pred, x_in, lvls[i])
            if guidance_fn is not None:
                with torch.enable_grad():
                    pred = pred + guidance_fn(x, t, x0, pred)
                x0 = S.x0_from_output(sched, pred, x_in, lvls[i])
            if native:
                x0 = _clip_x0(sched, x0)
                eps = S.eps_from_output(sched, pred, x_in, lvls[i])
                x = x0 if one_step_x0 else _ddim(sched, x0, eps, ts, i, eta, gens, timesteps is not None)
            else:
                x = sched.step(pred, t, x, **extra_step, return_dict=False)[1 if one_step_x0 else 0]
            if return_x0 or x0_grad:
                res.x0.append(x0 if x0_grad else x0.detach().clone())
            if cap is not None:  # an active capture_x0 block sees every step of native runs too
                cap.x0.append(x0.detach().clone())
                cap.timesteps.append(float(t))
            if mask is not None:
                x = m * x + (1 - m) * (S.noisy_state(sched, ref, noise, lvls[i + 1]) if i + 1 < N else ref)
    res.latents = x
    if output_type == "np":
        res.images = decode(pipe, x, height, width)
    return res


def _predict(fam, den, x_in, t, kw, do_cfg: bool, scale: float) -> torch.Tensor:
    xb = torch.cat([x_in, x_in]) if do_cfg else x_in
    tb = t.expand(xb.shape[0])
    if fam.timestep_scale != 1.0:
        tb = tb.to(xb.dtype) / fam.timestep_scale
    if fam.input_kwarg == "sample":  # UNets: positional, as the pipelines call them
        out = den(xb, tb, **kw, return_dict=False)[0]
    else:
        out = den(**{fam.input_kwarg: xb}, timestep=tb, **kw, return_dict=False)[0]
    if fam.learned_sigma and out.shape[1] == 2 * x_in.shape[1]:
        out = out.chunk(2, dim=1)[0]
    if do_cfg:
        u, c = out.chunk(2)
        out = u + scale * (c - u)
    return out


def _clip_x0(sched, x0):
    if sched.config.thresholding:
        return sched._threshold_sample(x0)
    if sched.config.clip_sample:
        return x0.clamp(-sched.config.clip_sample_range, sched.config.clip_sample_range)
    return x0


def _ddim(sched, x0, eps, ts, i, eta, gens, custom: bool):
    """One DDIM step. The previous level is the stock scheduler's t - n_train // steps (the next
    timestep for 'leading' spacing, off by one for some 'trailing' runs), or the next timestep of
    the run when the timesteps are custom; below 0 it is ``final_alpha_cumprod``."""
    from diffusers.utils.torch_utils import randn_tensor

    a_t = S.alpha_bar(sched, ts[i])
    if custom:
        prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
    else:
        prev = int(ts[i]) - sched.config.num_train_timesteps // sched.num_inference_steps
    a_prev = S.alpha_bar(sched, prev) if prev >= 0 else sched.final_alpha_cumprod.float().cpu()
    noise = randn_tensor(x0.shape, generator=gens, device=x0.device, dtype=x0.dtype) if eta > 0 else None
    return S.ddim_step(x0, eps, a_t, a_prev, eta, noise)

