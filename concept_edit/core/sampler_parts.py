"""Pieces of the native sampler (core/sampler.py): phases, per-family denoiser inputs, latent forms.

Example::

    >>> from concept_edit.core.sampler_parts import Phase
    >>> phases = [Phase(until_step=5, denoiser=base_pipe),           # steps 0-4: the base model
    ...           Phase(until_timestep=400, guidance=3.0),           # then while t > 400
    ...           Phase(adapter_scales={"size": 2.0})]               # the rest, slider at 2
    >>> res = sample(pipe, "a red circle", phases=phases)

A phase runs from where the previous one ended up to (not including) its bound: the step index
``until_step``, the first step whose timestep is <= ``until_timestep`` or whose sigma is <=
``until_sigma`` (flow sigma; sqrt((1 - a) / a) for DDPM-family schedulers). The last phase runs
to the end (leave its bound unset).
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
from torch import nn

from .denoise import _cat
from .backbones import backbone_of
from .lora import _ATTR as _ROUTER_ATTR


@dataclasses.dataclass(frozen=True)
class Phase:
    until_step: int | None = None
    until_timestep: float | None = None
    until_sigma: float | None = None
    denoiser: object = None          # a pipeline of the same family or a denoiser module
    adapter_scales: dict | None = None  # {adapter name: scale} for the LoRA router (core/lora.py)
    guidance: float | None = None    # the phase's guidance scale (default: sample's guidance)


def plan_phases(phases, ts, sigmas, k0: int) -> list[tuple[Phase, int, int]]:
    """[(phase, first step, end step)] covering steps k0..len(ts); ValueError on empty phases."""
    n, out, start = len(ts), [], k0
    for j, p in enumerate(phases):
        if sum(b is not None for b in (p.until_step, p.until_timestep, p.until_sigma)) > 1:
            raise ValueError(f"phase {j}: give one of until_step, until_timestep, until_sigma")
        if p.until_step is not None:
            end = min(int(p.until_step), n)
        elif p.until_timestep is not None:
            end = next((i for i in range(n) if float(ts[i]) <= p.until_timestep), n)
        elif p.until_sigma is not None:
            end = next((i for i in range(n) if sigmas[i] <= p.until_sigma), n)
        else:
            end = n
        if end <= start:
            raise ValueError(f"phase {j} runs no step (its bound falls at step {end}, the phase "
                             f"starts at step {start}): raise its until_* bound or drop the phase")
        if j == len(phases) - 1 and end < n:
            raise ValueError(f"the last phase ends at step {end} of {n}: leave its until_* unset so "
                             "it runs to the end")
        out.append((p, start, end))
        start = end
    return out


# -- per-family denoiser inputs (named in Backbone.sampler["extras"]) ------------------------
def _sdxl_time_ids(pipe, den, cond, n, height, width, device):
    pooled = cond["added_cond_kwargs"]["text_embeds"]
    te2 = getattr(pipe, "text_encoder_2", None)
    proj = te2.config.projection_dim if te2 is not None else int(pooled.shape[-1])
    ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width),
                                 dtype=cond["encoder_hidden_states"].dtype, text_encoder_projection_dim=proj)
    return {"added_cond_kwargs": {"time_ids": ids.to(device).repeat(n, 1)}}, {}


def _flux_ids(pipe, den, cond, n, height, width, device):
    pe = cond["encoder_hidden_states"]
    txt = torch.zeros(pe.shape[1], 3).to(device=device, dtype=pe.dtype)
    q = pipe.vae_scale_factor * 2
    img = pipe._prepare_latent_image_ids(n, int(height) // q, int(width) // q, device, pe.dtype)
    return {}, {"txt_ids": txt, "img_ids": img}


def _pixart_resolution(pipe, den, cond, n, height, width, device):
    if not getattr(den, "use_additional_conditions", False):
        return {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}, {}
    dt = cond["encoder_hidden_states"].dtype
    res = torch.tensor([height, width]).repeat(n, 1).to(dtype=dt, device=device)
    ar = torch.tensor([float(height / width)]).repeat(n, 1).to(dtype=dt, device=device)
    return {"added_cond_kwargs": {"resolution": res, "aspect_ratio": ar}}, {}


EXTRAS = {"sdxl_time_ids": _sdxl_time_ids, "flux_ids": _flux_ids, "pixart_resolution": _pixart_resolution}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def denoiser_kwargs(pipe, data, den, cond, uncond, n, height, width, guidance, device) -> dict:
    """Keyword inputs of the denoiser besides x_t and t; batch [uncond; cond] when ``uncond``."""
    text = _cat([uncond, cond]) if uncond is not None else cond
    batched, shared = ({}, {}) if data["extras"] is None else \
        EXTRAS[data["extras"]](pipe, den, cond, n, height, width, device)
    if uncond is not None:
        batched = _cat([batched, batched])
    kw = _merge(text, batched)
    kw.update(shared)
    if data["guidance_input"] and getattr(den.config, "guidance_embeds", False):
        b = 2 * n if uncond is not None else n
        kw[data["guidance_input"]] = torch.full([1], guidance, device=device, dtype=torch.float32).expand(b)
    return kw


# -- latent forms ------------------------------------------------------------------------------
def to_pipeline_form(pipe, data, z: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) latents -> the pipeline's form (FLUX: packed 2x2 tokens); others unchanged."""
    if data["packed"] and z.ndim == 4:
        b, c, h, w = z.shape
        return pipe._pack_latents(z, b, c, h, w)
    return z


def mask_to_latents(pipe, data, mask, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A (h, w), (N, h, w) or (N|1, 1, h, w) mask at any resolution -> x's shape (nearest)."""
    m = torch.as_tensor(mask, dtype=torch.float32)
    m = m[None, None] if m.ndim == 2 else m[:, None] if m.ndim == 3 else m
    k = 2 if data["packed"] else 1  # packed latent grids are even: 2 * (size // (2 vae_scale))
    q = pipe.vae_scale_factor * k
    hl, wl = (int(height) // q) * k, (int(width) // q) * k
    if tuple(m.shape[-2:]) != (hl, wl):
        m = torch.nn.functional.interpolate(m, size=(hl, wl))
    c = x.shape[2] // 4 if data["packed"] else x.shape[1]
    m = m[:, :1].expand(x.shape[0], c, hl, wl).contiguous()
    return to_pipeline_form(pipe, data, m).to(x)


# -- run set-up ---------------------------------------------------------------------------------
def set_timesteps(pipe, sched, data, den, steps, timesteps, sigmas, height, width, device, native):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

    kw = {}
    cfg = sched.config
    if timesteps is None and sigmas is None and data["flow_sigmas"] == "linspace":
        sigmas = np.linspace(1.0, 1 / steps, steps)
    if getattr(cfg, "use_flow_sigmas", False):
        sigmas = None
    if data["shift_mu"] == "always" or (data["shift_mu"] == "dynamic" and cfg.get("use_dynamic_shifting")):
        p = 2 if data["packed"] else getattr(den.config, "patch_size", 1)
        hl, wl = int(height) // pipe.vae_scale_factor, int(width) // pipe.vae_scale_factor
        seq = (hl // p) * (wl // p)
        base, top = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
        lo, hi = cfg.get("base_shift", 0.5), cfg.get("max_shift", data["max_shift"])
        m = (hi - lo) / (top - base)  # diffusers' calculate_shift, same operation order
        kw["mu"] = seq * m + (lo - m * base)
    if native and timesteps is not None:  # our DDIM step takes any decreasing timesteps
        sched.set_timesteps(len(timesteps), device=device)
        sched.timesteps = torch.as_tensor(timesteps, dtype=torch.long, device=device)
        return
    retrieve_timesteps(sched, steps if timesteps is None and sigmas is None else None, device,
                       timesteps, sigmas, **kw)


def start_index(ts, start_step, start_timestep) -> int:
    if start_step is not None and start_timestep is not None:
        raise ValueError("give start_step or start_timestep, not both")
    if start_timestep is not None:
        hits = [i for i, t in enumerate(ts.tolist()) if t <= start_timestep]
        if not hits:
            raise ValueError(f"no step has timestep <= {start_timestep} (last is {float(ts[-1])}): raise it")
        return hits[0]
    k = int(start_step or 0)
    if not 0 <= k < len(ts):
        raise ValueError(f"start_step={k} is outside the {len(ts)} steps; pick 0..{len(ts) - 1}")
    return k


def phase_denoiser(fam, denoiser) -> nn.Module | None:
    if denoiser is None or isinstance(denoiser, nn.Module):
        return denoiser
    other = backbone_of(denoiser).name
    if other != fam.name:
        raise ValueError(f"phase denoiser is a {other} pipeline, the sampled pipe is {fam.name}: "
                         "use a denoiser of the same family")
    return getattr(denoiser, fam.denoiser)


@contextlib.contextmanager
def bind_routers(dens, sched):
    """LoRA routers read the step index from the scheduler they are bound to: ours, for the run."""
    saved = [(r, r.scheduler) for r in (d.__dict__.get(_ROUTER_ATTR) for d in dens) if r is not None]
    for r, _ in saved:
        r.scheduler = sched
    try:
        yield
    finally:
        for r, s in saved:
            r.scheduler = s


def adapter_scales(den, scales):
    if not scales:
        return contextlib.nullcontext()
    router = den.__dict__.get(_ROUTER_ATTR)
    if router is None:
        raise ValueError("Phase.adapter_scales given but this denoiser has no LoRA adapters; drop "
                         "adapter_scales or add the adapters (core.lora.lora_router)")
    return router.scaled(**scales)
