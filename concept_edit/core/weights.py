"""Weight edits by path: snapshot, assign, restore (exactly), as a context manager too.

Example::

    >>> from concept_edit.core.weights import snapshot, assign, edited
    >>> keys = ["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
    >>> saved = snapshot(unet, keys)                    # fp32-exact clones
    >>> assign(unet, {keys[0]: new_w})                  # in place, dtype/device of the model
    >>> assign(unet, saved)                             # restore: bit-identical
    >>> with edited(unet, {keys[0]: new_w}):            # restored on exit, exceptions too
    ...     pipe(prompt)
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .paths import get_parameter


def snapshot(model: nn.Module, keys) -> dict[str, torch.Tensor]:
    """Clones of the named tensors, in their own dtype (restore is bit-exact)."""
    return {k: get_parameter(model, k).detach().clone() for k in keys}


@torch.no_grad()
def assign(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors into the named parameters in place (shape must match)."""
    for k, v in tensors.items():
        p = get_parameter(model, k)
        if tuple(p.shape) != tuple(v.shape):
            raise ValueError(f"{k}: shape {tuple(v.shape)} does not fit the model's {tuple(p.shape)}")
        p.copy_(v.to(device=p.device, dtype=p.dtype))


@contextlib.contextmanager
def edited(model: nn.Module, tensors: dict[str, torch.Tensor]):
    """Assign ``tensors`` for the duration of the block, then restore the originals exactly."""
    saved = snapshot(model, tensors.keys())
    try:
        assign(model, tensors)
        yield model
    finally:
        assign(model, saved)
