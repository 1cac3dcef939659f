"""Module paths: the one place that turns dotted paths into modules (after baukit's get_module).

Example::

    >>> from concept_edit.core.paths import get_module, match_paths
    >>> get_module(unet, "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v")
    Linear(in_features=768, out_features=320, bias=False)
    >>> match_paths(unet, ["*.attn2.to_k"])[:1]
    ['down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k']

Paths are those of ``named_modules()``. Modules wrapped by peft LoRA keep their path (the wrapper
sits where the original layer was); ``base_layer`` and ``lora_*`` children are never matched.
"""
from __future__ import annotations

import difflib
import fnmatch

import torch
from torch import nn


class SiteError(KeyError):
    """A module path or site group that does not exist; the message lists the nearest ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


_PEFT_CHILDREN = (".base_layer", ".lora_A", ".lora_B", ".lora_embedding", ".lora_dropout",
                  ".lora_magnitude_vector")


def _visible(path: str) -> bool:
    return not any(c in path for c in _PEFT_CHILDREN)


def all_paths(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n and _visible(n)]


def nearest_paths(model: nn.Module, path: str, n: int = 3) -> list[str]:
    return difflib.get_close_matches(path, all_paths(model), n=n, cutoff=0.0)


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path``; SiteError naming the nearest real paths otherwise."""
    if path == "":
        return model
    mod = model
    for part in path.split("."):
        nxt = mod._modules.get(part) if hasattr(mod, "_modules") else None
        if nxt is None:
            near = ", ".join(nearest_paths(model, path))
            raise SiteError(f"no module {path!r} in {type(model).__name__}; nearest: {near}")
        mod = nxt
    return mod


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_module(model, parent), name, new)


def get_parameter(model: nn.Module, path: str) -> torch.Tensor:
    """``'a.b.weight'`` -> the parameter (or buffer) tensor; SiteError if missing."""
    mod_path, _, name = path.rpartition(".")
    mod = get_module(model, mod_path)
    t = mod._parameters.get(name) if name in mod._parameters else mod._buffers.get(name)
    if t is None:
        # a peft-wrapped layer keeps its original tensors on base_layer
        base = getattr(mod, "base_layer", None)
        if base is not None and name in base._parameters:
            return base._parameters[name]
        raise SiteError(f"no tensor {name!r} on {mod_path!r}; it has: "
                        f"{', '.join(list(mod._parameters) + list(mod._buffers)) or 'nothing'}")
    return t


LAYER_TYPES = (nn.Linear, nn.Conv2d)


def _is_layer(m: nn.Module) -> bool:
    if isinstance(m, LAYER_TYPES):
        return True
    base = getattr(m, "base_layer", None)  # a peft LoRA wrapper
    return isinstance(base, LAYER_TYPES)


def match_paths(model: nn.Module, patterns, exclude=(), layers_only: bool = True) -> list[str]:
    """Module paths matching any glob in ``patterns`` and none in ``exclude``, in model order."""
    out = []
    for name, m in model.named_modules():
        if not name or not _visible(name):
            continue
        if layers_only and not _is_layer(m):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns) and not any(
                fnmatch.fnmatchcase(name, p) for p in exclude):
            out.append(name)
    return out
