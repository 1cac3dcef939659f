"""The noise maths in one place: x0 / epsilon from a denoiser output, noising, signal ratio.

Example::

    >>> from concept_edit.core import schedule as S
    >>> sched = pipe.scheduler                               # DDIM/Euler/... or flow matching
    >>> lvl = S.level(sched, 0.5)                            # timestep 500, or sigma 0.5
    >>> x_t = S.noisy(sched, x0, noise, lvl)                 # what the denoiser sees
    >>> S.x0_from_output(sched, denoiser_output, x_t, lvl)   # == x0 for a perfect denoiser

Every function is pure torch (differentiable in the tensors) and takes ``t_or_sigma``, the noise
level as the scheduler names it: a training timestep for DDPM-family schedulers (anything with
``alphas_cumprod``; ``a`` below is ``alphas_cumprod[t]``), sigma in [0, 1] for flow matching.
A level may be a number or a per-sample tensor of shape (N,).

==============  ===============================  ===================================
parameter       x_t (what the denoiser sees)     output
==============  ===============================  ===================================
epsilon         sqrt(a) x0 + sqrt(1-a) n         n
v_prediction    sqrt(a) x0 + sqrt(1-a) n         sqrt(a) n - sqrt(1-a) x0
sample          sqrt(a) x0 + sqrt(1-a) n         x0
flow            (1-s) x0 + s n                   n - x0
==============  ===============================  ===================================

Sampler states differ from x_t only for k-diffusion schedulers (Euler, Heun, LMS: those whose
``init_noise_sigma`` exceeds 1): they hold ``x_t / sqrt(a)`` = x0 + sigma n; ``state_scale``
gives that factor. ``ddim_step`` is the DDIM update with the square root clamped at 0, so
``eta > 1`` stays finite where the stock scheduler returns NaN.
"""
from __future__ import annotations

import torch


def is_flow(sched) -> bool:
    """True for flow-matching schedulers (sigmas, no ``alphas_cumprod``)."""
    return not hasattr(sched, "alphas_cumprod")


def parameterisation(sched) -> str:
    """'epsilon', 'v_prediction', 'sample' or 'flow'."""
    if is_flow(sched):
        return "flow"
    pred = getattr(sched.config, "prediction_type", "epsilon")
    return "sample" if pred == "original_sample" else pred


def _coef(v, like: torch.Tensor) -> torch.Tensor:
    """A level-derived coefficient, broadcast over ``like``'s batch (float32 maths, then cast)."""
    v = torch.as_tensor(v, dtype=torch.float32, device=like.device)
    if v.ndim and v.numel() > 1:
        v = v.reshape(-1, *([1] * (like.ndim - 1)))
    return v.to(like.dtype)


def alpha_bar(sched, t) -> torch.Tensor:
    """``alphas_cumprod`` at timestep(s) ``t`` (float32). Integral t index the table; a fractional
    t of the running schedule (k-diffusion timesteps) uses the scheduler's own sigma there, any
    other one the training sigmas linearly interpolated, as Euler's 'linear' interpolation."""
    ac = sched.alphas_cumprod.float().cpu()
    t = torch.as_tensor(t, dtype=torch.float64).cpu()
    if torch.all(t == t.round()):
        return ac[t.long().clamp(0, len(ac) - 1)]
    sig_train = ((1 - ac) / ac).sqrt().double()
    ts, sig = getattr(sched, "timesteps", None), getattr(sched, "sigmas", None)
    out = []
    for tv in t.flatten().tolist():
        hit = None
        if ts is not None and sig is not None:
            d = (ts.double().cpu() - tv).abs()
            if len(d) and float(d.min()) < 1e-4:
                hit = float(sig[int(d.argmin())])
        if hit is None:
            lo = min(int(tv), len(ac) - 2)
            w = tv - lo
            hit = float((1 - w) * sig_train[lo] + w * sig_train[lo + 1])
        out.append(1.0 / (1.0 + hit * hit))
    return torch.tensor(out, dtype=torch.float32).reshape(t.shape)


def train_step(sched, frac: float) -> int:
    """The training timestep of noise level ``frac`` in (0, 1) for DDPM-family schedulers."""
    n_train = len(sched.alphas_cumprod)
    return min(int(frac * n_train), n_train - 1)


def level(sched, frac: float):
    """The level of noise fraction ``frac``: timestep ``train_step`` (DDPM family) or sigma."""
    return float(frac) if is_flow(sched) else train_step(sched, frac)


def sigma_of(sched, t_or_sigma) -> torch.Tensor:
    """Noise-to-signal sigma: flow sigma itself, sqrt((1 - a) / a) for DDPM-family schedulers."""
    if is_flow(sched):
        return torch.as_tensor(t_or_sigma, dtype=torch.float32)
    a = alpha_bar(sched, t_or_sigma)
    return ((1 - a) / a).sqrt()


def noisy(sched, x0: torch.Tensor, noise: torch.Tensor, t_or_sigma) -> torch.Tensor:
    """x_t as the denoiser sees it: sqrt(a) x0 + sqrt(1-a) n, or (1-s) x0 + s n."""
    if is_flow(sched):
        s = _coef(t_or_sigma, x0)
        return (1 - s) * x0 + s * noise
    a = alpha_bar(sched, t_or_sigma)
    return _coef(a.sqrt(), x0) * x0 + _coef((1 - a).sqrt(), x0) * noise


def target(sched, x0: torch.Tensor, noise: torch.Tensor, t_or_sigma) -> torch.Tensor:
    """The output a perfect denoiser gives at ``noisy(sched, x0, noise, level)``."""
    p = parameterisation(sched)
    if p == "flow":
        return noise - x0
    if p == "epsilon":
        return noise
    if p == "sample":
        return x0
    a = alpha_bar(sched, t_or_sigma)
    return _coef(a.sqrt(), x0) * noise - _coef((1 - a).sqrt(), x0) * x0


def x0_from_output(sched, output: torch.Tensor, x_t: torch.Tensor, t_or_sigma) -> torch.Tensor:
    """Predicted clean sample from the denoiser ``output`` at ``x_t`` (as the denoiser sees it)."""
    p = parameterisation(sched)
    if p == "flow":
        return x_t - _coef(t_or_sigma, x_t) * output
    if p == "sample":
        return output
    a = alpha_bar(sched, t_or_sigma)
    sa, sb = _coef(a.sqrt(), x_t), _coef((1 - a).sqrt(), x_t)
    if p == "epsilon":
        return (x_t - sb * output) / sa
    return sa * x_t - sb * output  # v_prediction


def eps_from_output(sched, output: torch.Tensor, x_t: torch.Tensor, t_or_sigma) -> torch.Tensor:
    """Predicted noise n from the denoiser ``output`` at ``x_t`` (flow: n = x_t + (1 - s) v)."""
    p = parameterisation(sched)
    if p == "flow":
        return x_t + (1 - _coef(t_or_sigma, x_t)) * output
    if p == "epsilon":
        return output
    a = alpha_bar(sched, t_or_sigma)
    sa, sb = _coef(a.sqrt(), x_t), _coef((1 - a).sqrt(), x_t)
    if p == "sample":
        return (x_t - sa * output) / sb
    return sa * output + sb * x_t  # v_prediction


def signal_ratio(sched, t_or_sigma) -> float:
    """Signal over noise coefficient of x_t: sqrt(a / (1 - a)), or (1 - s) / s for flow matching.
    ``noise + signal_ratio * (x0_other - x0)`` is the noise under which x_t of ``x0_other``
    reads as a noisy ``x0``."""
    if is_flow(sched):
        s = float(t_or_sigma)
        return (1.0 - s) / s
    a = float(alpha_bar(sched, t_or_sigma))
    return (a / (1.0 - a)) ** 0.5


def state_scale(sched, t_or_sigma) -> torch.Tensor:
    """Sampler state = x_t * this: sqrt(1 + sigma^2) for k-diffusion schedulers
    (``init_noise_sigma`` > 1), else 1."""
    if is_flow(sched) or float(getattr(sched, "init_noise_sigma", 1.0)) <= 1.0:
        return torch.ones(())
    return 1.0 / alpha_bar(sched, t_or_sigma).sqrt()


def noisy_state(sched, x0: torch.Tensor, noise: torch.Tensor, t_or_sigma) -> torch.Tensor:
    """``noisy`` in the sampler's own state space (see ``state_scale``)."""
    return noisy(sched, x0, noise, t_or_sigma) * _coef(state_scale(sched, t_or_sigma), x0)


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, a_t, a_prev, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM update x_t -> x_prev from (x0, eps): sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) eps + s n
    with s = eta sqrt((1 - a_prev) / (1 - a_t) (1 - a_t / a_prev)). The second root is clamped at
    0: for eta > 1 the stock scheduler takes the root of a negative number (NaN); here the
    direction term vanishes and the step is a pure re-noising, so any eta stays finite."""
    a_t = torch.as_tensor(a_t, dtype=torch.float32)
    a_prev = torch.as_tensor(a_prev, dtype=torch.float32)
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * var.sqrt()
    direction = (1 - a_prev - std ** 2).clamp(min=0.0).sqrt()
    out = _coef(a_prev.sqrt(), x0) * x0 + _coef(direction, x0) * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise; pass noise=torch.randn_like(x0)")
        out = out + _coef(std, x0) * noise
    return out
