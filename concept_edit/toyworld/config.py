"""The toy-world training recipe's config (light: no torch, so `--help` is instant).

Example::

    >>> from concept_edit.toyworld.config import ToyTrainConfig
    >>> ToyTrainConfig(unet_steps=100).unet_steps
    100
"""
from __future__ import annotations

import dataclasses
import os

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
    arch: str = field("unet", "denoiser: unet (StableDiffusionPipeline, epsilon) | mmdit (StableDiffusion3Pipeline, "
                              "flow matching); the unet_* settings then apply to the MMDiT")
    base_vae: str = field("", "reuse the VAE of this toy pipeline (and the classifier) instead of training one")
    drop_size: float = field(0.2, "caption dropout of the size word")
    drop_colour: float = field(0.2, "caption dropout of the colour word (higher: unnamed colour varies more)")
    drop_background: float = field(0.2, "caption dropout of the background phrase")
    dit_width: int = field(128, "MMDiT hidden width (heads of 32)")
    dit_layers: int = field(4, "MMDiT joint blocks")
    flow_shift: float = field(1.0, "FlowMatchEulerDiscreteScheduler shift of the shipped MMDiT sampler")
    init_from: str = field("", "mmdit: start from this trained toy MMDiT pipeline (its transformer and text "
                               "encoders) instead of from scratch: a second training phase")
    warmup: int = field(300, "mmdit: learning-rate warm-up steps (then a cosine down to 5% of unet_lr)")
    t_uniform: float = field(0.0, "mmdit: share of training noise levels drawn uniformly on [0, 1] instead of "
                                  "logit-normal(0, 1) (which almost never draws s > 0.9, where a 64 px "
                                  "image's colour is decided)")
    sample_guidance: float = field(0.0, "default guidance written to the pipeline's concept_edit.json "
                                        "(0: the arch's own, unet 5.0, mmdit 2.0)")
    guidance_below: float = field(1.0, "the shipped sampler's guidance interval: steps whose timestep is above "
                                       "this fraction of the range run unguided (1: every step guided)")

    def check(self):
        if self.arch not in ("unet", "mmdit"):
            raise ConfigError(f"arch must be unet or mmdit, got {self.arch!r}")
        for k in ("drop_size", "drop_colour", "drop_background"):
            if not 0 <= getattr(self, k) < 1:
                raise ConfigError(f"{k} must be in [0, 1), got {getattr(self, k)}")
        if self.dit_width % 32:
            raise ConfigError(f"dit_width must be a multiple of 32 (heads of 32), got {self.dit_width}")
        if self.init_from and self.arch != "mmdit":
            raise ConfigError("init_from is for arch: mmdit; drop it or set arch: mmdit")
        if self.init_from and not os.path.isdir(os.path.join(self.init_from, "transformer")):
            raise ConfigError(f"init_from {self.init_from!r} is not a toy MMDiT pipeline directory (no "
                              "transformer/); train phase 1 first or point it at weights/toy-mmdit")
        if self.t_uniform and self.arch != "mmdit":
            raise ConfigError("t_uniform is for arch: mmdit (the UNet recipe ignores it); drop it or set arch: mmdit")
        if not 0 <= self.t_uniform <= 1:
            raise ConfigError(f"t_uniform must be in [0, 1], got {self.t_uniform}")
        if self.sample_guidance < 0:
            raise ConfigError(f"sample_guidance must be >= 0 (0: the arch's default), got {self.sample_guidance}")
        if not 0 < self.guidance_below <= 1:
            raise ConfigError(f"guidance_below must be in (0, 1] (1: every step guided), got {self.guidance_below}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0 steps, got {self.warmup}")
        for k in ("n_images", "vae_steps", "clf_steps", "unet_steps", "unet_batch", "ckpt_every"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"{k} must be positive, got {getattr(self, k)}")


@dataclasses.dataclass
class ToyDistillConfig(StrictConfig):
    """DMD2-style distillation of the toy world into a few-step student (weights/toy-turbo)."""

    base: str = field("weights/toy-world", "the teacher (real score) and the student's initialisation")
    work: str = field(".cache/toy-turbo", "scratch dir for checkpoints and the log (ignored by git)")
    out: str = field("weights/toy-turbo", "where the student pipeline is saved")
    seed: int = field(0, "seed of init noise, captions and timesteps")
    timesteps: list[int] = field([999, 749, 499, 249], "the student's timesteps (DMD2's four)")
    steps: int = field(700, "generator updates")
    fake_updates: int = field(2, "fake-score updates per generator update (DMD2's two time-scale rule: 5)")
    batch: int = field(32, "images per update")
    gen_lr: float = field(5e-5, "generator learning rate")
    fake_lr: float = field(1e-4, "fake-score learning rate")
    real_guidance: float = field(5.0, "classifier-free guidance of the real score (the base's own)")
    min_t: int = field(20, "smallest timestep of the distribution-matching noise")
    max_t: int = field(980, "largest timestep of the distribution-matching noise")
    ckpt_every: int = field(50, "checkpoint period (generator updates)")
    eval_every: int = field(200, "quick fidelity/diversity check period (generator updates)")
    threads: int = field(2, "torch CPU threads")

    def check(self):
        for k in ("steps", "fake_updates", "batch", "ckpt_every"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"{k} must be positive, got {getattr(self, k)}")
        ts = [int(t) for t in self.timesteps]
        if not ts or ts != sorted(ts, reverse=True) or ts[0] >= 1000 or ts[-1] < 0:
            raise ConfigError(f"timesteps must decrease within [0, 999], got {self.timesteps}")
        if not 0 <= self.min_t < self.max_t <= 999:
            raise ConfigError(f"need 0 <= min_t < max_t <= 999, got {self.min_t}, {self.max_t}")


def sampler_defaults(arch_defaults: dict, cfg: ToyTrainConfig) -> dict:
    """The concept_edit.json a trained toy pipeline ships: the arch's sampler defaults, with the
    recipe's ``sample_guidance`` and ``guidance_below`` when it sets them."""
    d = {**arch_defaults, **({"guidance": cfg.sample_guidance} if cfg.sample_guidance else {})}
    if cfg.guidance_below < 1:
        d["guidance_below"] = cfg.guidance_below
    return d
