"""SliderSpace configuration (strict: unknown keys name the nearest valid key).

Example::

    >>> SliderSpaceConfig(prompts=["a square", "a circle"], samples=512, components=8)
    >>> SliderSpaceConfig.from_dict({"prompts": ["a square"], "loss": "absolute"})

Every check here runs before a model loads (the CLI calls it first): an empty prompt list, fewer
samples than components, a bad embedder spec or a file that is not an open_clip state dict are
one-line :class:`~concept_edit.core.config.ConfigError`s.
"""
from __future__ import annotations

import dataclasses

from ...core.config import ConfigError, StrictConfig, field

LOSSES = ("delta", "absolute")
BASES = ("pca", "ica")
AUTO = "auto"


class SliderSpaceError(ValueError):
    """A SliderSpace run that cannot go ahead as asked (e.g. no such sites in this model)."""


@dataclasses.dataclass
class SliderSpaceConfig(StrictConfig):
    prompts: list[str] = field([], "prompts to sample (image i uses prompt i mod P, seed seed + i)")
    samples: int = field(512, "N: images sampled for the PCA (spread over the prompts)")
    components: int = field(8, "K: sliders, one per principal component 0..K-1")
    embedder: str = field("toy-clip", "image encoder: toy-clip | toy-clip:DIR | ARCH@WEIGHTS.safetensors "
                                      "(any open_clip model)")
    basis: str = field("pca", "pca: slider k follows principal component k (the reference) | ica: "
                              "independent directions inside the top-K principal subspace (FastICA; one "
                              "factor each where components of similar variance mix factors)")
    sites: str = field(AUTO, "auto (UNet/PixArt: text_kv = attn2 k/v, the reference's xattn-strict; "
                             "SD3/FLUX: every attention projection, its flux-attn) or a site group")
    loss: str = field("delta", "delta: -cos(phi(x0 slider) - phi(x0 base), pc) (the reference) | "
                               "absolute: 1 - cos(phi(x0 slider), pc)")
    iterations: int = field(300, "optimisation steps (each trains every slider of the step)")
    sliders_per_step: int = field(0, "sliders trained per step, drawn at random (0 = all K, sharing "
                                     "one base pass; the reference draws 3)")
    batch_size: int = field(1, "stored samples per step (each row: one sample x one slider)")
    lr: float = field(2e-3, "learning rate (AdamW, as the reference)")
    optimizer: str = field("adamw", "adam | adamw | sgd")
    scale: float = field(1.0, "slider scale while training")
    bidirectional: bool = field(False, "also train at -scale towards -pc (the reference trains + only)")
    train_up: bool = field(False, "also train the up vectors (then not orthonormal; default: frozen, "
                                  "as the reference)")
    init_scale: float = field(1.0, "down vectors start Kaiming-uniform x this (1 = the reference)")
    max_step_frac: float = field(1.0, "train on x_t from the first fraction of the sampling schedule "
                                      "(late steps leave x0-hat little room to move)")
    steps: int = field(0, "sampling steps (0 = the model's default)")
    train_steps: int = field(0, "0: x0-hat is one denoiser call at a step of the sampling schedule (the "
                                "reference, on few-step models); N: x_t at a step of an N-step schedule "
                                "is denoised to the end with gradients through every step (a few-step "
                                "outcome on a many-step model)")
    guidance: float | None = field(None, "CFG scale of sampling and of x0-hat (default: the model's)")
    size: int = field(0, "image size (0 = the model's default)")
    seed: int = field(0, "seed of the samples (seed + i) and of training draws")
    up_seed: int | None = field(None, "seed of the frozen orthonormal up vectors (default: seed); recorded")
    pca_components: int = field(100, "principal components kept in pca.safetensors (at most N-1, D)")
    sign_samples: int = field(16, "stored samples used to fix each slider's sign after training")
    start: float = field(0.0, "recommended inference start fraction (stored in every file)")
    train_after_start: bool = field(False, "draw x_t only from the steps where the sliders act at "
                                           "inference (after 'start'); the reference trains on all")
    cache_dir: str = field("", "cache of samples and embeddings (default: $CONCEPT_EDIT_CACHE, "
                               "else ~/.cache/concept_edit)/sliderspace")
    checkpoint_every: int = field(100, "steps between checkpoints (with a checkpoint directory)")

    def check(self) -> None:
        if not self.prompts:
            raise ConfigError("give at least one prompt (--prompt 'a square'); the prompt list is empty")
        for k in ("samples", "components", "iterations", "batch_size", "pca_components", "checkpoint_every"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"{k} must be positive, got {getattr(self, k)}")
        if self.samples <= self.components:
            raise ConfigError(f"{self.samples} samples give at most {self.samples - 1} principal components, "
                              f"fewer than the {self.components} asked for; raise --samples or lower "
                              "--components")
        if self.sliders_per_step < 0 or self.sliders_per_step > self.components:
            raise ConfigError(f"sliders_per_step must be 0 (all) or 1..{self.components}, got "
                              f"{self.sliders_per_step}")
        if self.basis not in BASES:
            raise ConfigError(f"basis must be one of {', '.join(BASES)}, got {self.basis!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ConfigError(f"optimizer must be adam, adamw or sgd, got {self.optimizer!r}")
        if not 0.0 < self.max_step_frac <= 1.0:
            raise ConfigError(f"max_step_frac must be a fraction in (0, 1], got {self.max_step_frac}")
        if not 0.0 <= self.start <= 1.0:
            raise ConfigError(f"start must be a fraction in [0, 1], got {self.start}")
        if self.train_after_start and self.start >= self.max_step_frac:
            raise ConfigError(f"train_after_start with start {self.start} >= max_step_frac {self.max_step_frac} "
                              "leaves no step to train on; lower start or raise max_step_frac")
        if self.sign_samples < 0 or self.steps < 0 or self.size < 0 or self.train_steps < 0:
            raise ConfigError("sign_samples, steps, train_steps and size must be >= 0")
        if self.scale == 0:
            raise ConfigError("scale 0 trains nothing (the slider is off); train at 1")
        from ...scorers.embedders import EmbedderError, check_spec

        try:
            check_spec(self.embedder)
        except EmbedderError as e:
            raise ConfigError(str(e)) from None
