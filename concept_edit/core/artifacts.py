"""Artifacts: one Artifact type for every method, in memory and on file.

Example::

    >>> from concept_edit.core.artifacts import Artifact, apply_artifact
    >>> art = METHODS.get("uce").run(model, cfg)                 # every method returns an Artifact
    >>> h = art.apply(model.pipe, scale=1.0)                     # in memory, checks the base
    >>> h.remove()                                               # exact original weights again
    >>> art.save("edit.safetensors")                             # one file per edit
    >>> art = Artifact.load("edit.safetensors"); h = art.apply(pipe, scale=0.5, name="uce")
    >>> handle = apply_artifact(pipe, "edit.safetensors")        # the same, from a path

An Artifact holds one or several edits (``Artifact.edits``), each a ``weights`` edit or a
``lora`` adapter with its metadata. One edit saves to one ``.safetensors`` file; several save to a
directory (one file per edit + ``manifest.json``), each file loadable on its own. Every file has
one header (``concept_edit`` JSON metadata: kind, method, config, base model, family, fingerprint
of the base tensors the edit touches):

- ``weights``: changed tensors under ``<component>.<module path>.weight``; applying at scale s
  sets W0 + s (W1 - W0) (s = 1: the edit itself).
- ``lora``: diffusers/peft LoRA keys ``<component>.<path>.lora_A.weight`` / ``lora_B.weight``
  (alpha/rank folded into B), so ``pipe.load_lora_weights(file)`` works in plain diffusers.
Files written by earlier versions load unchanged (the format did not change).
"""
from __future__ import annotations

import dataclasses
import json

import torch

from .families import detect_family, get_family
from .io import ArtifactError, META_KEY, atomic_save_file, fingerprint, load_safetensors, read_artifact_meta
from .lora import lora_router, recommended_schedule
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


def weights_edit(pipe, tensors: dict[str, torch.Tensor], method: str, config: dict,
                 extra: dict | None = None, originals: dict[str, torch.Tensor] | None = None) -> "Edit":
    """A weights edit (changed tensors under ``<component>.<path>``) with its header."""
    by_comp: dict[str, list[str]] = {}
    for k in tensors:
        c, rest = _split(k)
        by_comp.setdefault(c, []).append(rest)
    meta = {"format": "concept_edit", "version": 1, "kind": "weights", "method": method,
            "config": config, "base": base_info(pipe, by_comp, originals), **(extra or {})}
    return Edit({k: v.float() for k, v in tensors.items()}, meta)


def lora_edit(pipe, lora_sd: dict[str, torch.Tensor], method: str, config: dict, lora: dict,
              extra: dict | None = None) -> "Edit":
    """A LoRA adapter (diffusers keys) with its header; ``lora``: rank, alpha, group, targets,
    recommended start/scale."""
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
    return Edit(dict(lora_sd), meta, {"lora_adapter_metadata": json.dumps(diffusers_meta)})


def save_weights_artifact(pipe, tensors: dict[str, torch.Tensor], path: str, method: str,
                          config: dict, extra: dict | None = None,
                          originals: dict[str, torch.Tensor] | None = None) -> dict:
    edit = weights_edit(pipe, tensors, method, config, extra, originals)
    edit.save(path)
    return edit.meta


def save_lora_artifact(pipe, lora_sd: dict[str, torch.Tensor], path: str, method: str, config: dict,
                       lora: dict, extra: dict | None = None) -> dict:
    edit = lora_edit(pipe, lora_sd, method, config, lora, extra)
    edit.save(path)
    return edit.meta


@dataclasses.dataclass
class Edit:
    """One weights edit or LoRA adapter: tensors + the concept_edit header (+ other header keys)."""

    tensors: dict
    meta: dict
    header: dict = dataclasses.field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "")

    def save(self, path: str) -> None:
        atomic_save_file(self.tensors, path, metadata={META_KEY: json.dumps(self.meta), **self.header})


@dataclasses.dataclass
class Artifact:
    """One or several edits of one base model; what every method's ``run`` returns."""

    edits: list
    names: list = dataclasses.field(default_factory=list)  # one per edit (file stems when saved)

    def __post_init__(self):
        if not self.names:
            self.names = [f"edit_{i:02d}" for i in range(len(self.edits))] if len(self.edits) > 1 else ["edit"]

    @property
    def meta(self) -> dict:
        return self.edits[0].meta

    def save(self, path: str) -> list[str]:
        """One edit: ``path`` is a .safetensors file. Several: ``path`` is a directory holding
        NAME.safetensors per edit and manifest.json (written as a whole, or not at all)."""
        import os

        if len(self.edits) == 1:
            if not path.endswith(".safetensors"):
                raise ArtifactError(f"{path}: write a .safetensors file name")
            self.edits[0].save(path)
            return [path]
        from .io import atomic_dir

        with atomic_dir(path) as tmp:
            for name, e in zip(self.names, self.edits):
                e.save(os.path.join(tmp, f"{name}.safetensors"))
            with open(os.path.join(tmp, "manifest.json"), "w") as f:
                json.dump({"edits": [{"file": f"{n}.safetensors", "method": e.meta.get("method"),
                                      "kind": e.kind} for n, e in zip(self.names, self.edits)]}, f, indent=1)
        return [os.path.join(path, f"{n}.safetensors") for n in self.names]

    @classmethod
    def load(cls, path: str) -> "Artifact":
        """A file written by concept_edit (any version), or a directory of them."""
        import os

        if os.path.isdir(path):
            files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
            if not files:
                raise ArtifactError(f"{path} holds no .safetensors files")
            arts = [cls.load(os.path.join(path, f)) for f in files]
            return cls([a.edits[0] for a in arts], [f[:-len(".safetensors")] for f in files])
        meta = read_artifact_meta(path)
        sd = load_safetensors(path)
        _check_tensors(sd, path)
        from .io import read_metadata

        header = {k: v for k, v in read_metadata(path).items() if k != META_KEY}
        name = os.path.basename(path)[:-len(".safetensors")] if path.endswith(".safetensors") else "edit"
        return cls([Edit(sd, meta, header)], [name])

    def apply(self, pipe, scale: float = 1.0, start: float | None = None, force: bool = False,
              name: str | None = None, index: int = 0, label: str = "artifact") -> "Applied":
        """Apply edit ``index`` to a pipeline (or Model) at ``scale``; ``handle.remove()`` undoes it."""
        e = self.edits[index]
        return _apply(getattr(pipe, "pipe", pipe), e.meta, e.tensors, label, scale, start, force,
                      name or self.names[index])


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
    """Apply a concept_edit artifact file to ``pipe`` (weights edit or LoRA) at ``scale``."""
    meta = read_artifact_meta(path)
    check_base(getattr(pipe, "pipe", pipe), meta, path, force)
    sd = load_safetensors(path)
    _check_tensors(sd, path)
    return _apply(getattr(pipe, "pipe", pipe), meta, sd, path, scale, start, force, name)


def _apply(pipe, meta: dict, sd: dict, path: str, scale: float, start: float | None, force: bool,
           name: str | None) -> Applied:
    check_base(pipe, meta, path, force)
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
        sched = recommended_schedule(meta, start)
        if sched is not None:
            router.set_schedule(name, sched)
        return Applied(pipe, path, meta, name)
    raise ArtifactError(f"{path}: unknown artifact kind {meta.get('kind')!r}; this concept_edit is too old?")
