"""Kohya (ComfyUI / A1111) key format for UNet LoRAs, both ways.

Example::

    >>> to_kohya({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": A, ...})
    {'lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight': A, ..., '...alpha': tensor(4.)}

Our files fold alpha/rank into lora_B, so the kohya file carries ``alpha = rank`` (scale 1) and
reproduces the same outputs. Module names keep diffusers' layout with '.' -> '_', which ComfyUI
and A1111 map for SD1.x/2.x/SDXL UNets.
"""
from __future__ import annotations

import re

import torch

PREFIX = {"unet": "lora_unet_"}


def to_kohya(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        m = re.match(r"^(\w+)\.(.+)\.lora_([AB])\.weight$", k)
        if not m:
            raise ValueError(f"not a diffusers LoRA key: {k!r}")
        comp, path, ab = m.groups()
        if comp not in PREFIX:
            raise ValueError(f"kohya export covers UNet LoRAs (SD1.x/2.x/SDXL); this file is for "
                             f"{comp!r}: ComfyUI loads our diffusers-format file directly")
        name = PREFIX[comp] + path.replace(".", "_")
        out[f"{name}.lora_{'down' if ab == 'A' else 'up'}.weight"] = v.contiguous()
        if ab == "A":
            out[f"{name}.alpha"] = torch.tensor(float(v.shape[0]))
    return out


def from_kohya(sd: dict[str, torch.Tensor], module_paths: list[str]) -> dict[str, torch.Tensor]:
    """Back to diffusers keys; ``module_paths`` resolves '_' ambiguity (the model's real paths)."""
    lookup = {p.replace(".", "_"): p for p in module_paths}
    out = {}
    for k, v in sd.items():
        m = re.match(r"^lora_unet_(.+)\.(lora_down|lora_up|alpha)(?:\.weight)?$", k)
        if not m:
            raise ValueError(f"not a kohya UNet LoRA key: {k!r}")
        flat, kind = m.groups()
        if kind == "alpha":
            continue
        if flat not in lookup:
            raise ValueError(f"kohya key {k!r} names no module of this UNet")
        path = lookup[flat]
        if kind == "lora_down":
            out[f"unet.{path}.lora_A.weight"] = v
        else:
            down = sd[f"lora_unet_{flat}.lora_down.weight"]
            alpha = float(sd.get(f"lora_unet_{flat}.alpha", torch.tensor(float(down.shape[0]))))
            out[f"unet.{path}.lora_B.weight"] = v * (alpha / down.shape[0])
    return out
