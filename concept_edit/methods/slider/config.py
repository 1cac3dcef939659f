"""Concept Slider configuration (strict YAML: unknown keys name the nearest valid key).

Example (configs/sliders/toy-size.yaml)::

    prompts:
      - target: "a {}"
        positive: "a large {}"
        unconditional: "a small {}"
        action: enhance
        guidance: 4.0
    preservation: [circle, square, triangle, star]
    sites: noxattn

``{}`` in a prompt is filled with each preservation attribute (copies of the prompt set, one
sampled per step); prompts without ``{}`` get the attribute as a prefix, as in the reference.
"""
from __future__ import annotations

import dataclasses

from ...core.config import ConfigError, StrictConfig, field

TRANSPORT_FROM = 0.5  # the cross term only where x_t is mostly noise (its targets grow as 1/noise)

SITES = {"xattn": ("xattn",), "noxattn": ("noxattn",), "selfattn": ("selfattn",), "full": ("all",),
         "c3lier": ("noxattn", "resnets")}


@dataclasses.dataclass
class PromptSet(StrictConfig):
    target: str = field("", "prompt the LoRA'd model is trained on")
    positive: str = field("", "prompt of the concept to enhance")
    unconditional: str = field("", "the OPPOSITE concept (not ''), as in the paper")
    neutral: str | None = field(None, "base prompt of the target (default: target)")
    action: str = field("enhance", "enhance | erase")
    guidance: float = field(4.0, "g in  neutral + g (positive - unconditional)")

    def check(self) -> None:
        if self.action not in ("enhance", "erase"):
            raise ConfigError(f"action must be enhance or erase, got {self.action!r}")
        if not self.positive and not self.unconditional:
            raise ConfigError("a prompt set needs a positive and an unconditional (opposite) prompt")

    def expand(self, attr: str | None) -> "PromptSet":
        def fill(p: str | None) -> str | None:
            if p is None or attr is None:
                return p
            return p.replace("{}", attr) if "{}" in p else f"{attr} {p}".strip()

        return PromptSet(fill(self.target), fill(self.positive), fill(self.unconditional),
                         fill(self.neutral) if self.neutral is not None else fill(self.target),
                         self.action, self.guidance)


@dataclasses.dataclass
class ImagePairs(StrictConfig):
    low: str = field("", "folder of 'low' images (scale -s)")
    high: str = field("", "folder of 'high' images with the same file names (scale +s)")
    prompt: str = field("", "prompt used while training on the pairs")
    captions: bool = field(False, "train each pair under its caption low/NAME.txt (kohya-style; "
                                  "pairs without one use 'prompt'; a file of several lines gives "
                                  "several captions, one drawn per step)")
    scale: float = field(1.0, "s: LoRA scale for high, -s for low")

    def check(self) -> None:
        if not self.low or not self.high:
            raise ConfigError("image_pairs needs 'low' and 'high' folders")
        if self.scale == 0:
            raise ConfigError("image_pairs scale 0 trains nothing; give the LoRA scale of 'high' "
                              "(e.g. 1; 'low' gets its negative)")


@dataclasses.dataclass
class SliderConfig(StrictConfig):
    name: str = field("slider", "slider name (metadata, adapter name)")
    prompts: list = field([], "text slider prompt sets (target, positive, unconditional, ...)")
    preservation: list[str] = field([], "attributes filling '{}' (or prefixing) every prompt set")
    image_pairs: dict | list | None = field(None, "image-pair slider: {low, high, prompt, captions, "
                                                  "scale}, or a list of them (levels: e.g. low/high at "
                                                  "scale 1, verylow/veryhigh at 2); each step draws one")
    transport: float = field(0.0, "image pairs: weight of the cross term (LoRA at +s on noisy LOW "
                                  "images must predict HIGH ones, at -s the reverse) on noise levels "
                                  ">= 0.5; 0 = the paper's objective")
    text_scale: float = field(1.0, "text sliders: the LoRA scale the target is trained at (the paper: 1; "
                                   "train at the scale you will use, e.g. 2, to avoid extrapolating)")
    bidirectional: bool = field(False, "text sliders: also train the LoRA at -text_scale towards the "
                                       "mirrored target (out(neutral) -/+ g (...)), so the negative "
                                       "side is trained, not extrapolated; twice the passes per step")
    contrast: str = field("opposite", "text sliders: opposite (the paper: g (out(positive) - out(unconditional))) "
                                      "| neutral (g (out(positive) - out(neutral)); with bidirectional the "
                                      "negative side moves to out(unconditional): a sample already at one "
                                      "end is not pushed past it)")
    sites: str = field("noxattn", "xattn | noxattn | selfattn | full | c3lier (adds resnet conv LoRA)")
    rank: int = field(4, "LoRA rank")
    alpha: float = field(1.0, "LoRA alpha (scale alpha / rank)")
    conv_rank: int | None = field(None, "rank of conv LoRA for c3lier (default: rank)")
    iterations: int = field(500, "optimisation steps")
    lr: float = field(2e-4, "learning rate")
    optimizer: str = field("adamw", "adam | adamw | sgd")
    batch_size: int = field(1, "x_t samples per step")
    sampler: str = field("bank", "bank (frozen-model trajectories, refreshed) | online (LoRA active)")
    bank_size: int = field(8, "trajectories per prompt set in the bank")
    bank_refresh: int = field(0, "regenerate the bank every N steps with new seeds (0 = never)")
    ddim_steps: int = field(50, "denoising steps of x_t trajectories")
    sample_guidance: float = field(3.0, "CFG used to sample x_t")
    size: int = field(0, "image size (0 = the model's default)")
    start: float = field(0.0, "recommended inference start fraction (stored in the file)")
    stop: float = field(1.0, "recommended inference stop fraction (stored in the file): the slider is "
                             "off again from this fraction of the steps on, so the base model "
                             "finishes the details (1 = on to the last step, the paper's)")
    train_after_start: bool = field(False, "train only on the denoising steps where the slider acts "
                                           "at inference (after 'start'); the reference trains on all")
    train_start: float | None = field(None, "with train_after_start: the fraction training begins "
                                            "at, if not 'start' (e.g. a little before it)")
    checkpoint_every: int = field(100, "steps between checkpoints (with --resume)")
    seed: int = field(0, "seed")

    def check(self) -> None:
        if self.sites not in SITES:
            raise ConfigError(f"unknown sites {self.sites!r}; choose one of {', '.join(SITES)}")
        if self.contrast not in ("opposite", "neutral"):
            raise ConfigError(f"contrast must be opposite or neutral, got {self.contrast!r}")
        if self.text_scale == 0:
            raise ConfigError("text_scale 0 trains nothing; give the LoRA scale the target is trained "
                              "at (e.g. 1, the paper's, or 2)")
        if self.sampler not in ("bank", "online"):
            raise ConfigError(f"sampler must be bank or online, got {self.sampler!r}")
        sets = []
        for i, p in enumerate(self.prompts):
            if isinstance(p, PromptSet):
                sets.append(p)
            elif isinstance(p, dict):
                try:
                    sets.append(PromptSet.from_dict(p))
                except ConfigError as e:
                    raise ConfigError(f"prompts[{i}]: {e}") from None
            else:
                raise ConfigError(f"prompts[{i}] must be a mapping with target/positive/unconditional")
        object.__setattr__(self, "prompts", sets)
        if self.image_pairs is not None:
            object.__setattr__(self, "image_pairs", self._pair_levels(self.image_pairs))
        if not self.prompts and self.image_pairs is None:
            raise ConfigError("give text prompt sets ('prompts:') or 'image_pairs:'")
        for k in ("rank", "iterations", "batch_size", "bank_size", "ddim_steps", "checkpoint_every"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"{k} must be positive, got {getattr(self, k)}")
        if self.transport < 0:
            raise ConfigError(f"transport is a loss weight >= 0, got {self.transport}")
        if self.transport and self.image_pairs is None:
            raise ConfigError("transport weighs an image-pair term; add image_pairs or drop transport")
        if not 0.0 <= self.start <= 1.0:
            raise ConfigError(f"start must be a fraction in [0, 1], got {self.start}")
        if self.stop != 1.0 and not self.start < self.stop <= 1.0:
            raise ConfigError(f"stop must be a fraction in (start, 1], got {self.stop} (start {self.start})")
        if self.train_start is not None and not 0.0 <= self.train_start <= 1.0:
            raise ConfigError(f"train_start must be a fraction in [0, 1], got {self.train_start}")
        if self.train_after_start and self.first_step() >= self.ddim_steps:
            key = "start" if self.train_start is None else "train_start"
            raise ConfigError(f"train_after_start with {key} {getattr(self, key)} leaves no step of "
                              f"{self.ddim_steps} to train on; lower {key}")
        if self.transport and 1.0 - self.first_step() / self.ddim_steps <= TRANSPORT_FROM:
            raise ConfigError(f"transport acts on noise levels >= {TRANSPORT_FROM}, which training "
                              "never reaches with this start; lower train_start or drop transport")

    @staticmethod
    def _pair_levels(value):
        """One ImagePairs (a mapping) or a list of them (levels with their own scales)."""
        def one(v, where):
            if isinstance(v, ImagePairs):
                return v
            if not isinstance(v, dict):
                raise ConfigError(f"{where} must be a mapping with low/high/scale")
            try:
                return ImagePairs.from_dict(v)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None

        if not isinstance(value, (list, tuple)):
            return one(value, "image_pairs")
        if not value:
            raise ConfigError("image_pairs is an empty list; give at least one {low, high, scale}")
        levels = [one(v, f"image_pairs[{i}]") for i, v in enumerate(value)]
        scales = [lv.scale for lv in levels]
        if len(set(scales)) < len(scales):
            raise ConfigError(f"image_pairs levels need distinct scales, got {scales}")
        return levels

    def pair_levels(self) -> list[ImagePairs]:
        """The image-pair sets (one per level); [] for a text slider."""
        if self.image_pairs is None:
            return []
        return list(self.image_pairs) if isinstance(self.image_pairs, list) else [self.image_pairs]

    def first_step(self) -> int:
        """First trajectory step trained on: round(start x ddim_steps) with train_after_start, else 0
        (the same rounding as the inference switch in core.lora)."""
        if not self.train_after_start:
            return 0
        return round((self.start if self.train_start is None else self.train_start) * self.ddim_steps)

    def prompt_sets(self) -> list[PromptSet]:
        attrs = self.preservation or [None]
        return [p.expand(a) for p in self.prompts for a in attrs]

    def site_groups(self) -> tuple[str, ...]:
        return SITES[self.sites]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return d
