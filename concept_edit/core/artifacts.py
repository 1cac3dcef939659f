"""Artifacts: one safetensors file per edit, self-describing, applicable to its base only.

Example::

    >>> from concept_edit.core.artifacts import save_weights_artifact, apply_artifact
    >>> save_weights_artifact(pipe, {"unet.<path>.weight": w_new}, "edit.safetensors",
    ...                       method="uce", config=cfg.to_dict())
    >>> handle = apply_artifact(pipe, "edit.safetensors")        # checks the base fingerprint
    >>> handle.remove()                                          # exact original weights again

Two kinds share one header (``concept_edit`` JSON metadata: kind, method, config, base model,
family, fingerprint of the base tensors the edit touches):

- ``weights``: changed tensors under ``<component>.<module path>.weight``; applying at scale s
  sets W0 + s (W1 - W0) (s = 1: the edit itself).
- ``lora``: diffusers/peft LoRA keys ``<component>.<path>.lora_A.weight`` / ``lora_B.weight``
  (alpha/rank folded into B), so ``pipe.load_lora_weights(file)`` works in plain diffusers.
"""
from __future__ import annotations

import dataclasses
import json

import torch

from .families import detect_family, get_family
from .io import ArtifactError, META_KEY, atomic_save_file, fingerprint, load_safetensors, read_artifact_meta
from .lora import lora_router, start_schedule
from .weights import assign, snapshot


def base_info(pipe, keys_by_component: dict[str, list[str]],
              originals: dict[str, torch.Tensor] | None = None) -> dict:
    """Model id, family and a fingerprint of the base tensors an artifact touches.

    ``originals`` ('<component>.<key>' -> tensor) stands in for tensors the pipe holds edited.
    """
    tensors = {}
    for comp, keys in keys_by_component.items():
        module = getattr(pipe, comp)
        for k in keys:
            full = f"{comp}.{k}"
            tensors[full] = originals[full] if originals and full in originals else snapshot(module, [k])[k]
    from .model import model_of

    return {"model": model_of(pipe).source,
            "family": detect_family(pipe), "fingerprint": fingerprint(tensors)}


def _split(key: str) -> tuple[str, str]:
    comp, _, rest = key.partition(".")
    return comp, rest


def save_weights_artifact(pipe, tensors: dict[str, torch.Tensor], path: str, method: str,
                          config: dict, extra: dict | None = None,
                          originals: dict[str, torch.Tensor] | None = None) -> dict:
    by_comp: dict[str, list[str]] = {}
    for k in tensors:
        c, rest = _split(k)
        by_comp.setdefault(c, []).append(rest)
    meta = {"format": "concept_edit", "version": 1, "kind": "weights", "method": method,
            "config": config, "base": base_info(pipe, by_comp, originals), **(extra or {})}
    atomic_save_file({k: v.float() for k, v in tensors.items()}, path, metadata={META_KEY: json.dumps(meta)})
    return meta


def save_lora_artifact(pipe, lora_sd: dict[str, torch.Tensor], path: str, method: str, config: dict,
                       lora: dict, extra: dict | None = None) -> dict:
    """``lora``: rank, alpha, group, targets (module paths), recommended start/scale."""
    fam = get_family(detect_family(pipe))
    paths = sorted({k.split(".", 1)[1].rsplit(".lora_", 1)[0] for k in lora_sd})
    meta = {"format": "concept_edit", "version": 1, "kind": "lora", "method": method,
            "config": config, "lora": lora,
            "base": base_info(pipe, {fam.denoiser: [f"{p}.weight" for p in paths]}), **(extra or {})}
    rank = max(v.shape[0] for k, v in lora_sd.items() if k.endswith("lora_A.weight"))
    diffusers_meta = {f"{fam.denoiser}.r": rank, f"{fam.denoiser}.lora_alpha": rank,
                      f"{fam.denoiser}.target_modules": paths}
    conv = {k.split(".", 1)[1].rsplit(".lora_", 1)[0]: v.shape[0] for k, v in lora_sd.items()
            if k.endswith("lora_A.weight") and v.shape[0] != rank}
    if conv:
        diffusers_meta[f"{fam.denoiser}.rank_pattern"] = conv
        diffusers_meta[f"{fam.denoiser}.alpha_pattern"] = conv
    atomic_save_file(lora_sd, path, metadata={META_KEY: json.dumps(meta),
                                              "lora_adapter_metadata": json.dumps(diffusers_meta)})
    return meta


@dataclasses.dataclass
class Applied:
    """A live application of an artifact; ``remove()`` undoes it exactly."""

    pipe: object
    path: str
    meta: dict
    name: str
    saved: dict | None = None

    def remove(self) -> None:
        if self.meta["kind"] == "weights":
            for comp, sd in self.saved.items():
                assign(getattr(self.pipe, comp), sd)
        else:
            lora_router(self.pipe).remove(self.name)


def _base(meta: dict) -> dict:
    b = meta.get("base")
    return b if isinstance(b, dict) else {}


def _check_tensors(sd: dict, path: str) -> None:
    """Floating tensors with finite values only (a NaN edit would poison every image)."""
    if not sd:
        raise ArtifactError(f"{path} holds no tensors; re-create it with concept-edit")
    for k, v in sd.items():
        if not v.is_floating_point():
            raise ArtifactError(f"{path}: tensor {k} has dtype {v.dtype}, expected a float; damaged file")
        if not torch.isfinite(v).all():
            raise ArtifactError(f"{path}: tensor {k} holds NaN or inf values; re-create the file "
                                "(a diverged training?)")


def check_base(pipe, meta: dict, path: str, force: bool = False) -> None:
    fam = detect_family(pipe)
    base = _base(meta)
    if force:
        return
    if base.get("family") != fam:
        raise ArtifactError(f"{path} was made for a {base.get('family')} model ({base.get('model')}); "
                            f"this is a {fam} model: pass the right --model, or --force")


def apply_artifact(pipe, path: str, scale: float = 1.0, start: float | None = None,
                   force: bool = False, name: str | None = None) -> Applied:
    """Apply a concept_edit artifact to ``pipe`` (weights edit or LoRA) at ``scale``."""
    meta = read_artifact_meta(path)
    check_base(pipe, meta, path, force)
    sd = load_safetensors(path)
    _check_tensors(sd, path)
    fam = get_family(detect_family(pipe))
    if meta.get("kind") == "weights":
        by_comp: dict[str, dict[str, torch.Tensor]] = {}
        for k, v in sd.items():
            c, rest = _split(k)
            if not hasattr(pipe, c):
                raise ArtifactError(f"{path}: this pipeline has no component {c!r}; wrong base model")
            by_comp.setdefault(c, {})[rest] = v
        try:
            saved = {c: snapshot(getattr(pipe, c), d.keys()) for c, d in by_comp.items()}
        except (KeyError, AttributeError) as e:
            raise ArtifactError(f"{path}: this model has no tensor {e}; wrong base model") from None
        for c, d in by_comp.items():
            for k, v in d.items():
                if tuple(v.shape) != tuple(saved[c][k].shape):
                    raise ArtifactError(f"{path}: {c}.{k} has shape {tuple(v.shape)}, the model's is "
                                        f"{tuple(saved[c][k].shape)}; wrong base model")
        fp = fingerprint({f"{c}.{k}": v for c, d in saved.items() for k, v in d.items()})
        if not force and fp != _base(meta).get("fingerprint"):
            raise ArtifactError(f"{path} was made for other base weights ({_base(meta).get('model')}); "
                                "this model's tensors differ: pass the right --model, or --force")
        for c, d in by_comp.items():
            module = getattr(pipe, c)
            new = {k: saved[c][k].float() + scale * (v.float() - saved[c][k].float()) for k, v in d.items()}
            assign(module, new)
        return Applied(pipe, path, meta, name or path, saved)
    if meta.get("kind") == "lora":
        router = lora_router(pipe)
        den = getattr(pipe, fam.denoiser)
        paths = sorted({k.split(".", 1)[1].rsplit(".lora_", 1)[0] for k in sd})
        if not force:
            try:
                fp = fingerprint({f"{fam.denoiser}.{p}.weight": snapshot(den, [f"{p}.weight"])[f"{p}.weight"]
                                  for p in paths})
            except KeyError as e:
                raise ArtifactError(f"{path}: {e}; wrong base model (or pass --force)") from None
            if fp != _base(meta).get("fingerprint"):
                raise ArtifactError(f"{path} was trained on other base weights ({_base(meta).get('model')}); "
                                    "pass the right --model, or --force")
        name = name or f"artifact{len(router.adapters)}"
        try:
            router.load(name, sd, prefix=fam.denoiser)
        except (KeyError, ValueError, RuntimeError, AttributeError) as e:
            router.remove(name) if name in router.adapters else None
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ArtifactError(f"{path}: its LoRA does not fit this model ({msg[:200]}); wrong base "
                                "model or a damaged file") from None
        router.set_scale(name, scale)
        if start is None:
            start = float(meta.get("lora", {}).get("start", 0.0))
        if start > 0:
            router.set_schedule(name, start_schedule(start))
        return Applied(pipe, path, meta, name)
    raise ArtifactError(f"{path}: unknown artifact kind {meta.get('kind')!r}; this concept_edit is too old?")
