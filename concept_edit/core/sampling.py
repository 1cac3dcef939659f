"""Seeded image generation on any family (one seed per image, batch-invariant).

Example::

    >>> from concept_edit.core.sampling import generate, SampleSettings
    >>> imgs = generate(pipe, SampleSettings(prompt="a red circle", n=4, seed=0))
    >>> imgs.shape                                  # (4, H, W, 3) uint8; image i uses seed + i
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from tqdm.auto import tqdm



@dataclasses.dataclass
class SampleSettings:
    prompt: str | list[str] = ""
    negative_prompt: str | None = None
    n: int = 1
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    batch: int = 16
    guidance_below: float | None = None   # guidance interval (core.sampler.sample); None: the model's

    def resolved(self, pipe) -> "SampleSettings":
        d = pipe_defaults(pipe)
        return dataclasses.replace(
            self, steps=self.steps or d["steps"],
            guidance=self.guidance if self.guidance is not None else d["guidance"],
            height=self.height or d["size"], width=self.width or self.height or d["size"],
            guidance_below=self.guidance_below if self.guidance_below is not None else d.get("guidance_below", 1.0))


def pipe_defaults(pipe) -> dict:
    """Sampler defaults: concept_edit.json beside the model, else the model's own config
    (denoiser sample size x VAE scale factor), else the family table."""
    from .model import model_of

    return dict(model_of(pipe).defaults)


@torch.no_grad()
def generate(pipe, s: SampleSettings, progress: bool = True, output_type: str = "np") -> np.ndarray:
    """(N, H, W, 3) uint8 images; image i is generated from seed ``s.seed + i`` by the native
    sampler (``core.sampler.sample``: the same images as ``pipe(...)``, tested per family).

    ``progress``: one bar over every denoising step of every batch (counted at the denoiser)."""
    from .backbones import backbone_of
    from .hooks import hooks
    from .sampler import sample

    s = s.resolved(pipe)
    bb = backbone_of(pipe)
    prompts = [s.prompt] * s.n if isinstance(s.prompt, str) else list(s.prompt)
    device = getattr(pipe, "_execution_device", "cpu")
    out = []
    chunks = range(0, len(prompts), s.batch)
    bar = tqdm(total=len(chunks) * s.steps, desc=f"generate {len(prompts)} image(s)", unit="step",
               disable=not progress, leave=False)

    def tick(*_a, **_k):
        bar.update(1)

    try:
        with hooks(bb.module(pipe)).scoped("concept_edit:progress", "", pre=tick):
            for i in chunks:
                idx = list(range(i, min(i + s.batch, len(prompts))))
                gens = [torch.Generator(device).manual_seed(s.seed + j) for j in idx]
                res = sample(pipe, [prompts[j] for j in idx], generator=gens, steps=s.steps,
                             guidance=s.guidance, height=s.height, width=s.width,
                             negative_prompt=s.negative_prompt, guidance_below=s.guidance_below,
                             output_type="np")
                out.append((np.clip(res.images, 0, 1) * 255).round().astype(np.uint8))
    finally:
        bar.close()
    return np.concatenate(out)
