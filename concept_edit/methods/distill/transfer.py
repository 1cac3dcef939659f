"""Slider transfer: a LoRA trained on the base applied to a distilled model (and to the hybrid).

Example::

    >>> from concept_edit.methods.distill import apply_slider, apply_to_pair
    >>> h = apply_slider(turbo, "size.safetensors", scale=2.0)                 # from step 0
    >>> h = apply_slider(turbo, "size.safetensors", scale=2.0, start_timestep=700)
    >>> hs = apply_to_pair(base, turbo, "size.safetensors", scale=2.0, start_step=1)
    >>> res = hybrid_sample(base, turbo, "a circle", switch=1); [h.remove() for h in hs]

The distilled model's weights differ from the base's by design, so the base fingerprint the file
records cannot match: the transfer checks instead that the family is the same and that every
LoRA site exists on the target with the LoRA's shapes, and refuses by name otherwise (one line).
It then applies the file with ``apply_artifact(..., force=True)``. ``start_step=k``: the slider
is off for steps ``[0, k)`` of the run (the index in the scheduler the router is bound to: the
shared schedule of a hybrid); ``start_timestep=T``: off while the step's timestep is > T.
"""
from __future__ import annotations

import re

from torch import nn

from ...core.artifacts import Applied, apply_artifact
from ...core.backbones import backbone_of
from ...core.io import ArtifactError, load_safetensors, read_artifact_meta
from ...core.lora import lora_router, recommended_schedule

__all__ = ["apply_slider", "apply_to_pair", "lora_sites", "check_sites"]


def lora_sites(path: str, prefix: str | None = None) -> dict[str, tuple]:
    """{module path: (A shape, B shape)} of a LoRA file (keys ``<prefix>.<path>.lora_A.weight``)."""
    sd = load_safetensors(path)
    pat = re.compile(rf"^{re.escape(prefix) if prefix else '[^.]+'}\.(.+)\.lora_([AB])\.weight$")
    out: dict[str, dict] = {}
    for k, v in sd.items():
        m = pat.match(k)
        if m:
            out.setdefault(m.group(1), {})[m.group(2)] = tuple(v.shape)
    return {p: (d.get("A"), d.get("B")) for p, d in out.items()}


def _get(model: nn.Module, path: str):
    mod = model
    for part in path.split("."):
        mod = mod._modules.get(part) if hasattr(mod, "_modules") else None
        if mod is None:
            return None
    return mod


def _io(mod: nn.Module) -> tuple[int, int] | None:
    base = mod.get_base_layer() if hasattr(mod, "get_base_layer") else mod
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if isinstance(base, nn.Conv2d):
        return base.in_channels, base.out_channels
    return None


def check_sites(pipe, path: str) -> list[str]:
    """The LoRA's module paths, after checking the family and that each site exists on ``pipe``'s
    denoiser with fitting shapes; ArtifactError naming the sites otherwise."""
    pipe = getattr(pipe, "pipe", pipe)
    meta = read_artifact_meta(path)
    if meta.get("kind") != "lora":
        raise ArtifactError(f"{path} is a {meta.get('kind')!r} edit, not a LoRA: weight edits are "
                            "deltas of the base's own tensors and do not transfer; use a slider LoRA")
    fam = backbone_of(pipe)
    base = meta.get("base") if isinstance(meta.get("base"), dict) else {}
    if base.get("family") and base["family"] != fam.name:
        raise ArtifactError(f"{path} is a LoRA for a {base['family']} model ({base.get('model')}); "
                            f"this is a {fam.name} model: its sites do not exist here")
    sites = lora_sites(path, fam.denoiser)
    if not sites:
        raise ArtifactError(f"{path}: no '{fam.denoiser}.*.lora_A.weight' keys: not a LoRA for this "
                            f"{fam.name} model's {fam.denoiser}")
    den = getattr(pipe, fam.denoiser)
    missing, misfit = [], []
    for p, (a, b) in sorted(sites.items()):
        mod = _get(den, p)
        io = _io(mod) if mod is not None else None
        if mod is None or io is None:
            missing.append(p)
        elif a is None or b is None or a[1] != io[0] or b[0] != io[1]:
            misfit.append(f"{p} (LoRA {a}/{b}, layer in {io[0]} out {io[1]})")
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ArtifactError(f"{path}: {len(missing)} of its {len(sites)} LoRA sites do not exist on this "
                            f"model ({', '.join(missing[:3])}{more}); it was trained on "
                            f"{base.get('model')}: wrong target model")
    if misfit:
        raise ArtifactError(f"{path}: {len(misfit)} LoRA sites do not fit this model's layers "
                            f"({'; '.join(misfit[:2])}); wrong target model")
    return sorted(sites)


def _step_schedule(k: int):
    if k < 0:
        raise ValueError(f"start_step={k}: give a step index >= 0")
    return lambda i, n: 0.0 if i < k else 1.0


def _timestep_schedule(router, t_start: float):
    def fn(i, n):
        ts = getattr(router.scheduler, "timesteps", None)
        if ts is None or i >= len(ts):
            return 1.0
        return 0.0 if float(ts[i]) > t_start else 1.0
    return fn


def apply_slider(pipe, path: str, scale: float = 1.0, start_step: int | None = None,
                 start_timestep: float | None = None, name: str | None = None,
                 check: bool = True) -> Applied:
    """Apply a base-trained LoRA slider to ``pipe`` (a distilled model, or the base itself).
    ``handle.remove()`` undoes it. ``check=False`` skips the site check (the file's own base
    fingerprint is never required here)."""
    if start_step is not None and start_timestep is not None:
        raise ValueError("give start_step or start_timestep, not both")
    pipe = getattr(pipe, "pipe", pipe)
    if check:
        check_sites(pipe, path)
    h = apply_artifact(pipe, path, scale=scale, start=0.0, force=True, name=name)
    router = lora_router(pipe)
    if start_step is not None:
        router.set_schedule(h.name, _step_schedule(int(start_step)))
    elif start_timestep is not None:
        router.set_schedule(h.name, _timestep_schedule(router, float(start_timestep)))
    else:
        sched = recommended_schedule(h.meta)  # the file's start / stop fractions, as apply_artifact
        if sched is not None:
            router.set_schedule(h.name, sched)
    return h


def apply_to_pair(base, distilled, path: str, scale: float = 1.0, start_step: int | None = None,
                  start_timestep: float | None = None, name: str | None = None) -> list[Applied]:
    """The slider on both denoisers of a hybrid (the same start rule on each); remove both after."""
    hs = [apply_slider(base, path, scale, start_step, start_timestep, name)]
    try:
        hs.append(apply_slider(distilled, path, scale, start_step, start_timestep, name))
    except Exception:
        hs[0].remove()
        raise
    return hs
