"""The toy-world training recipe's config (light: no torch, so `--help` is instant).

Example::

    >>> from concept_edit.toyworld.config import ToyTrainConfig
    >>> ToyTrainConfig(unet_steps=100).unet_steps
    100
"""
from __future__ import annotations

import dataclasses

from ..core.config import ConfigError, StrictConfig, field


@dataclasses.dataclass
class ToyTrainConfig(StrictConfig):
    work: str = field(".cache/toyworld", "scratch dir for data and checkpoints (ignored by git)")
    out: str = field("weights/toy-world", "where the diffusers pipeline is saved")
    classifier_out: str = field("weights/toy-classifier", "where the classifier is saved")
    seed: int = field(0, "seed of data, init and batches")
    n_images: int = field(100_000, "training renders")
    vae_steps: int = field(2500, "VAE optimisation steps")
    vae_batch: int = field(48, "VAE batch")
    vae_crop: int = field(32, "VAE training crop size (px, multiple of 4)")
    vae_lr: float = field(1e-3, "VAE learning rate")
    clf_steps: int = field(2000, "classifier steps")
    clf_batch: int = field(64, "classifier batch")
    clf_images: int = field(30_000, "classifier training renders (half seen through the VAE)")
    unet_steps: int = field(6000, "text encoder + UNet steps")
    unet_batch: int = field(64, "UNet batch")
    unet_lr: float = field(1e-3, "UNet/text-encoder learning rate")
    unet_width: int = field(32, "UNet base channel width")
    ema: float = field(0.999, "EMA decay of the exported UNet/text encoder")
    min_snr: float = field(5.0, "min-SNR-gamma loss weighting")
    ckpt_every: int = field(250, "checkpoint period (steps)")
    eval_every: int = field(1000, "quick classifier check of samples during UNet training")
    threads: int = field(2, "torch CPU threads")

    def check(self):
        for k in ("n_images", "vae_steps", "clf_steps", "unet_steps", "unet_batch", "ckpt_every"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"{k} must be positive, got {getattr(self, k)}")
