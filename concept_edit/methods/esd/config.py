"""ESD configuration (strict).

Example::

    >>> from concept_edit.methods.esd.config import EsdConfig
    >>> EsdConfig(concepts=["circle"], variant="x").site_group()
    'xattn'
"""
from __future__ import annotations

import dataclasses

from ...core.config import ConfigError, StrictConfig, field

VARIANTS = {"x": "xattn", "x-strict": "text_kv", "u": "esd_u", "self": "selfattn", "full": "all"}


@dataclasses.dataclass
class EsdConfig(StrictConfig):
    concepts: list[str] = field([], "concepts to erase; one is sampled per step when several")
    anchor: str = field("", "'' (paper), '{concept}' (newer code: its eta=2 ~ paper eta=1) or a text "
                            "to erase the concept from (e.g. 'cowboy' for 'cowboy hat')")
    eta: float = field(1.0, "negative-guidance strength of the target")
    variant: str = field("x", "parameters trained: x | x-strict | u | self | full")
    iterations: int = field(300, "optimisation steps")
    lr: float = field(1e-4, "learning rate (LoRA); use ~1e-5 for direct fine-tuning")
    optimizer: str = field("adam", "adam | adamw | sgd")
    batch_size: int = field(1, "x_t samples per step")
    train: str = field("lora", "lora (rank/alpha below) | direct (fp32 master weights)")
    rank: int = field(4, "LoRA rank")
    alpha: float = field(4.0, "LoRA alpha (scale = alpha / rank)")
    sampler: str = field("bank", "x_t source: bank (frozen-model trajectories, made once) | online "
                                  "(partial denoising with the model being trained, the paper's)")
    bank_size: int = field(16, "trajectories per concept in the bank")
    ddim_steps: int = field(50, "denoising steps of x_t trajectories")
    guidance: float = field(3.0, "CFG scale used to sample x_t")
    size: int = field(0, "image size of x_t trajectories (0 = the model's default)")
    gradient_checkpointing: bool = field(False, "recompute block activations in backward: less "
                                                "memory (SD-sized models), ~30% slower steps")
    checkpoint_every: int = field(100, "steps between checkpoints (with --resume)")
    seed: int = field(0, "seed of sampling and training draws")

    def check(self) -> None:
        if not self.concepts or not all(c.strip() for c in self.concepts):
            raise ConfigError("give at least one non-empty concept to erase (--concept circle)")
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.sampler not in ("bank", "online"):
            raise ConfigError(f"sampler must be bank or online, got {self.sampler!r}")
        if self.train not in ("lora", "direct"):
            raise ConfigError(f"train must be lora or direct, got {self.train!r}")
        for k in ("iterations", "batch_size", "rank", "bank_size", "ddim_steps", "checkpoint_every"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"{k} must be positive, got {getattr(self, k)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")

    def site_group(self) -> str:
        return VARIANTS[self.variant]

    def anchor_for(self, concept: str) -> str:
        return self.anchor.replace("{concept}", concept)
