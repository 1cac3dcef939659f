"""Family-agnostic denoiser access: encode prompts, capture trajectories, predict.

Example::

    >>> from concept_edit.core.denoise import Denoiser
    >>> dn = Denoiser(pipe)
    >>> cond = dn.encode(["a circle", ""])                     # text kwargs of the denoiser
    >>> bank = dn.capture(["a circle"] * 4, steps=25, guidance=3.0, seed=0)
    >>> state = bank.take([0, 1], [10, 3])                      # x_t (scaled as the scheduler
    >>> out = dn.predict(state, dn.encode(["a circle"] * 2))    #  requires) + timestep + extras

``capture`` records the denoiser's own inputs during a real pipeline call (a scoped hook), so
x_t is already scaled the way the scheduler requires (``scale_model_input``) and every
family-specific extra (SDXL time ids, FLUX ids and guidance, PixArt resolution) comes along.
Which keyword carries text is family data (``Family.text_kwargs``).
"""
from __future__ import annotations

import dataclasses
import inspect

import torch

from .backbones import Backbone, backbone_of
from .hooks import hooks

_DROP = {"return_dict", "cross_attention_kwargs", "joint_attention_kwargs", "attention_kwargs"}


def _get(d: dict, key: str):
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _set(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        d = d.setdefault(part, {})
    d[parts[-1]] = value


def _map(x, fn):
    if isinstance(x, dict):
        return {k: _map(v, fn) for k, v in x.items()}
    if isinstance(x, torch.Tensor):
        return fn(x)
    return x


def _cat(items: list):
    first = items[0]
    if isinstance(first, dict):
        return {k: _cat([it[k] for it in items]) for k in first}
    if isinstance(first, torch.Tensor):
        return torch.cat(items)
    return first


@dataclasses.dataclass
class Bank:
    """Captured denoiser inputs: ``states[step]`` is a kwargs dict with batch = #trajectories."""

    states: list[dict]
    shared: dict
    timesteps: torch.Tensor
    prompts: list[str]

    @property
    def n_steps(self) -> int:
        return len(self.states)

    @property
    def n_traj(self) -> int:
        return len(self.prompts)

    def take(self, traj: list[int], steps: list[int]) -> dict:
        """A batched state: trajectory ``traj[i]`` at step ``steps[i]``."""
        rows = [_map(self.states[s], lambda t, i=i: t[i:i + 1]) for i, s in zip(traj, steps)]
        out = _cat(rows)
        out.update(self.shared)
        return out


class Denoiser:
    def __init__(self, pipe):
        self.pipe = pipe
        self.family: Backbone = backbone_of(pipe)
        self.module = getattr(pipe, self.family.denoiser)
        self._params = list(inspect.signature(self.module.forward).parameters)

    @property
    def device(self):
        return self.module.device

    # -- text ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: list[str], empty_is_uncond: bool = False) -> dict:
        """The text keyword inputs of the denoiser for ``prompts`` (no CFG doubling).

        ``empty_is_uncond``: encode '' the way the pipeline encodes the CFG unconditional branch
        (SDXL with ``force_zeros_for_empty_prompt`` uses zeros there, not the text of '').
        """
        return self.family.encode(self.pipe, prompts, empty_is_uncond=empty_is_uncond, device=self.device)

    # -- trajectories ----------------------------------------------------------------------
    def pipe_kwargs(self, steps: int, guidance: float, height: int | None, width: int | None) -> dict:
        kw = dict(num_inference_steps=steps, guidance_scale=guidance, output_type="latent")
        kw.update(dict(self.family.pipeline_kwargs))
        if height:
            kw.update(height=height, width=width or height)
        return kw

    @torch.no_grad()
    def capture(self, prompts: list[str], steps: int, guidance: float, seed: int,
                height: int | None = None, width: int | None = None, negative: str | None = None,
                batch: int = 16, progress: bool = False, stop_after: int | None = None,
                generators: list | None = None, desc: str = "trajectories") -> Bank:
        """Run the pipeline on ``prompts`` (seeds seed, seed+1, ...) recording denoiser inputs.

        ``stop_after=k`` cuts every run short once the input of step k is recorded (partial
        denoising, as in the papers' online x_t sampling).
        """
        from tqdm.auto import tqdm

        from .trace import StopForward

        text = set(k.split(".")[0] for k in self.family.text_kwargs)
        per_call: list[list[dict]] = []
        shared: dict = {}
        chunks = [list(range(i, min(i + batch, len(prompts)))) for i in range(0, len(prompts), batch)]
        for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
            calls: list[dict] = []
            b = len(chunk)

            def pre(args, kwargs, path, calls=calls, b=b):
                bound = dict(zip(self._params, args))
                bound.update(kwargs)
                state = {}
                for k, v in bound.items():
                    if k in _DROP or v is None:
                        continue
                    if k in self.family.shared_kwargs:
                        shared[k] = v.detach()
                        continue
                    if k == "timestep":
                        v = torch.as_tensor(v, device=self.device).flatten()
                        v = v.expand(b) if v.numel() == 1 else v[-b:]
                        state[k] = v.detach().clone()
                        continue
                    if k == "added_cond_kwargs":
                        sub = {kk: vv[-b:].detach().clone() for kk, vv in v.items()
                               if isinstance(vv, torch.Tensor) and kk not in ("text_embeds",)}
                        if sub:
                            state[k] = sub
                        continue
                    if k in text:
                        continue
                    if isinstance(v, torch.Tensor):
                        state[k] = v[-b:].detach().clone()
                calls.append(state)
                if stop_after is not None and len(calls) > stop_after:
                    raise StopForward()
                return None

            gens = [generators[i] for i in chunk] if generators else \
                [torch.Generator(self.device).manual_seed(seed + i) for i in chunk]
            kw = self.pipe_kwargs(steps, guidance, height, width)
            if negative is not None:
                kw["negative_prompt"] = [negative] * b
            with hooks(self.module).scoped("concept_edit:capture", "", pre=pre):
                try:
                    self.pipe([prompts[i] for i in chunk], generator=gens, **kw)
                except StopForward:
                    pass
            per_call.append(calls)
        n = min(len(c) for c in per_call)
        states = [_cat([c[s] for c in per_call]) for s in range(n)]
        ts = torch.stack([st["timestep"][0] for st in states]).cpu()
        return Bank(states, shared, ts, list(prompts))

    def cat(self, states: list[dict]) -> dict:
        return cat_states(states, self.family.shared_kwargs)

    # -- prediction ------------------------------------------------------------------------
    def predict(self, state: dict, cond: dict) -> torch.Tensor:
        """Denoiser output (eps / v / flow, as the family predicts) for a state and text."""
        kw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in state.items()}
        n = kw[self.family.input_kwarg].shape[0]
        for key in self.family.text_kwargs:
            v = _get(cond, key)
            if v is None:
                continue
            if v.shape[0] != n:
                if n % v.shape[0]:
                    raise ValueError(f"text batch {v.shape[0]} does not divide state batch {n}")
                v = v.repeat_interleave(n // v.shape[0], dim=0)
            _set(kw, key, v)
        if self.family.positional_call:
            x, t = kw.pop("sample"), kw.pop("timestep")
            out = self.module(x, t, return_dict=False, **kw)[0]
        else:
            out = self.module(return_dict=False, **kw)[0]
        if self.family.learned_sigma:
            lat = state[self.family.input_kwarg].shape[1]
            if out.shape[1] == 2 * lat:
                out = out.chunk(2, dim=1)[0]
        return out


class CondTable:
    """Prompts encoded once; ``table(names)`` gives the batched text kwargs for those names.

    Example: ``cond = CondTable(dn, ["a circle", ""]); dn.predict(state, cond(["a circle"] * 4))``
    """

    def __init__(self, dn: "Denoiser", texts, empty_is_uncond: bool = False):
        self.texts = sorted(set(texts))
        self.index = {t: i for i, t in enumerate(self.texts)}
        self.table = dn.encode(self.texts, empty_is_uncond=empty_is_uncond)

    def __call__(self, names) -> dict:
        idx = torch.tensor([self.index[n] for n in names])
        return _map(self.table, lambda t: t[idx.to(t.device)])


def cat_states(states: list[dict], shared_keys=()) -> dict:
    """Concatenate states along the batch; ``shared_keys`` (no batch dim) are taken once."""
    shared = {k: states[0][k] for k in shared_keys if k in states[0]}
    out = _cat([{k: v for k, v in s.items() if k not in shared} for s in states])
    out.update(shared)
    return out


@torch.no_grad()
def encode_images(pipe, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> latents as the denoiser's sampler holds them (scaled, shifted)."""
    vae = pipe.vae
    z = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((z - shift) * vae.config.scaling_factor).float()


def signal_ratio(dn: Denoiser, frac: float) -> float:
    """Signal over noise coefficient of x_t at noise level ``frac`` (the same levels as
    noisy_state): sqrt(a / (1 - a)) for DDPM-family schedulers, (1 - s) / s for flow matching.
    ``noise + signal_ratio * (x0_other - x0)`` is the noise under which x_t of ``x0_other`` reads as
    a noisy ``x0``."""
    sched = dn.pipe.scheduler
    if hasattr(sched, "alphas_cumprod"):
        a = float(sched.alphas_cumprod[_train_step(sched, frac)])
        return (a / (1.0 - a)) ** 0.5
    return (1.0 - frac) / frac


def _train_step(sched, frac: float) -> int:
    """The training timestep of noise level ``frac`` for DDPM-family schedulers."""
    n_train = len(sched.alphas_cumprod)
    return min(int(frac * n_train), n_train - 1)


def noisy_state(dn: Denoiser, template: dict, x0: torch.Tensor, noise: torch.Tensor,
                frac: float) -> tuple[dict, torch.Tensor]:
    """Training pair at noise level ``frac`` in (0, 1): (state with x_t, regression target).

    DDPM-family schedulers: x_t = sqrt(a) x0 + sqrt(1-a) n (this is also the scaled input that
    Euler-type samplers feed the UNet); target n (epsilon) or the velocity (v-prediction).
    Flow matching: x_t = (1 - s) x0 + s n, target n - x0. Packed latents (FLUX) are packed here.
    """
    sched = dn.pipe.scheduler
    b = x0.shape[0]
    if hasattr(sched, "alphas_cumprod"):
        t = torch.full((b,), _train_step(sched, frac), dtype=torch.long)
        a = sched.alphas_cumprod[t].to(x0)[:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = getattr(sched.config, "prediction_type", "epsilon")
        target = noise if pred == "epsilon" else (a.sqrt() * noise - (1 - a).sqrt() * x0)
        tval = t.to(dn.device)
    else:
        s = torch.full((b,), float(frac))
        xt = (1 - s[:, None, None, None]) * x0 + s[:, None, None, None] * noise
        target = noise - x0
        tval = (s * 1000.0 / dn.family.timestep_scale).to(dn.device)
    xt, target = dn.family.pack(dn.pipe, xt), dn.family.pack(dn.pipe, target)
    state = {k: v for k, v in template.items()}
    extras = {k: (v.expand(b, *v.shape[1:]) if isinstance(v, torch.Tensor) else
                  {kk: vv.expand(b, *vv.shape[1:]) for kk, vv in v.items()} if isinstance(v, dict) else v)
              for k, v in template.items() if k not in (dn.family.input_kwarg, "timestep")
              and k not in dn.family.shared_kwargs}
    state.update(extras)
    state[dn.family.input_kwarg] = xt.to(dn.device, dn.module.dtype)
    state["timestep"] = tval
    return state, target
