"""x0-hat capture: the predicted clean sample at every denoising step, for every family.

Example::

    >>> from concept_edit.core.x0 import capture_x0
    >>> with capture_x0(pipe) as cap:
    ...     pipe("a red circle", num_inference_steps=10)
    >>> len(cap.x0), cap.timesteps[:2]                 # one latent per step (guided prediction)
    >>> frames = cap.decode()                           # list over steps of (N, H, W, 3) uint8

The hook wraps ``pipe.scheduler.step`` for the duration of the block (restored on exit): it sees
the guided model output, the timestep and the current sample, exactly what the scheduler sees.
x0 comes from the scheduler when it reports ``pred_original_sample``; otherwise from the
parameterisation (flow matching: x0 = x_t - sigma * v; DDPM family: epsilon / v / sample).
"""
from __future__ import annotations

import contextlib
import dataclasses
import weakref

import numpy as np
import torch

from .backbones import backbone_of


@dataclasses.dataclass
class X0Capture:
    pipe: object
    x0: list = dataclasses.field(default_factory=list)
    timesteps: list = dataclasses.field(default_factory=list)
    height: int | None = None
    width: int | None = None

    _native: bool = False

    @contextlib.contextmanager
    def native(self):
        """The native sampler records x0-hat itself: the scheduler wrapper stays silent."""
        self._native = True
        try:
            yield
        finally:
            self._native = False

    @torch.no_grad()
    def decode(self, every: int = 1) -> list[np.ndarray]:
        return [decode_latents(self.pipe, z, self.height, self.width) for z in self.x0[::every]]


def _x0(sched, out, model_output, timestep, sample):
    pos = getattr(out, "pred_original_sample", None)
    if pos is not None:
        return pos
    if hasattr(sched, "sigmas") and not hasattr(sched, "alphas_cumprod"):  # flow matching
        i = sched.step_index - 1 if sched.step_index is not None else sched.index_for_timestep(timestep)
        sigma = sched.sigmas[i].to(sample.device, sample.dtype)
        return sample - sigma * model_output
    a = sched.alphas_cumprod.to(sample.device)[int(timestep)].to(sample.dtype)
    pred = sched.config.prediction_type
    if pred == "epsilon":
        return (sample - (1 - a).sqrt() * model_output) / a.sqrt()
    if pred == "v_prediction":
        return a.sqrt() * sample - (1 - a).sqrt() * model_output
    return model_output


_ACTIVE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def active_capture(pipe) -> "X0Capture | None":
    return _ACTIVE.get(pipe)


@contextlib.contextmanager
def capture_x0(pipe, height: int | None = None, width: int | None = None):
    sched = pipe.scheduler
    cap = X0Capture(pipe, height=height, width=width)
    original = sched.step

    def step(model_output, timestep, sample, *args, **kwargs):
        out = original(model_output, timestep, sample, *args, **kwargs)
        if cap._native:
            return out
        if isinstance(out, tuple):  # return_dict=False: (prev_sample, pred_original_sample?)
            res = _Tuple(out[1]) if len(out) > 1 and isinstance(out[1], torch.Tensor) else None
        else:
            res = out
        cap.x0.append(_x0(sched, res, model_output, timestep, sample).detach().clone())
        cap.timesteps.append(float(torch.as_tensor(timestep).flatten()[0]))
        return out

    sched.step = step
    _ACTIVE[pipe] = cap
    try:
        yield cap
    finally:
        _ACTIVE.pop(pipe, None)
        del sched.step  # the instance attribute goes; the class method shows through again


@dataclasses.dataclass
class _Tuple:
    pred_original_sample: torch.Tensor


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, height: int | None = None,
                   width: int | None = None) -> np.ndarray:
    """Latents as the pipeline holds them -> (N, H, W, 3) uint8 images."""
    vae = pipe.vae
    z = backbone_of(pipe).unpack(pipe, latents, height, width)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = z.to(vae.dtype) / vae.config.scaling_factor + shift
    img = vae.decode(z, return_dict=False)[0]
    img = ((img.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return img.permute(0, 2, 3, 1).cpu().numpy()
