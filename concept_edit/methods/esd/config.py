"""ESD configuration (strict).

Example::

    >>> from concept_edit.methods.esd.config import EsdConfig
    >>> EsdConfig(concepts=["circle"], variant="x").site_group()
    'xattn'

A concept is a string, or a mapping that overrides ``anchor``, ``negative`` and ``templates`` for
that concept alone (an attribute erased next to an object)::

    concepts:
      - circle
      - {concept: striped, anchor: "plain|dotted", negative: anchor,
         templates: ["a {} background", "a square on a {} background"]}
"""
from __future__ import annotations

import dataclasses

from ...core.config import ConfigError, StrictConfig, field

VARIANTS = {"x": "xattn", "x-strict": "text_kv", "u": "esd_u", "self": "selfattn", "full": "all"}


@dataclasses.dataclass
class EsdConfig(StrictConfig):
    concepts: list = field([], "concepts to erase (strings, or mappings {concept, anchor, negative, "
                               "templates}); one is sampled per step when several")
    anchor: str = field("", "'' (paper), '{concept}' (newer code: its eta=2 ~ paper eta=1) or a text "
                            "to erase the concept from (e.g. 'cowboy' for 'cowboy hat'); 'a|b' "
                            "averages several anchors")
    eta: float = field(1.0, "negative-guidance strength of the target")
    negative: str = field("empty", "what eta pushes away from: empty (paper: out(c) - out('')) | "
                                   "anchor (out(c) - out(anchor): moves an attribute, keeps the scene)")
    templates: list[str] = field([], "contexts with '{}' the concept and its anchor are trained in (one "
                                     "per trajectory), e.g. 'a {} background'; [] = the concept alone")
    preserve: list[str] = field([], "prompts the edit must leave as the frozen model renders them "
                                    "(target = their own frozen output), e.g. the other objects "
                                    "on the other backgrounds; not in the paper (see docs/esd.md)")
    preserve_share: float = field(0.25, "share of each batch drawn from 'preserve' prompts")
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
        specs = [self._spec(i, c) for i, c in enumerate(self.concepts)]
        if not specs:
            raise ConfigError("give at least one non-empty concept to erase (--concept circle)")
        object.__setattr__(self, "_specs", specs)
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
        if not 0.0 < self.preserve_share < 1.0:
            raise ConfigError(f"preserve_share must be in (0, 1), got {self.preserve_share}")
        object.__setattr__(self, "preserve", [" ".join(str(p).split()) for p in self.preserve])
        erased = {s.prompts(t)[0] for s in specs for t in range(s.n_templates())}
        clash = [p for p in self.preserve if p in erased]
        if clash:
            raise ConfigError(f"preserve prompt {clash[0]!r} is also a prompt to erase; remove it "
                              "from 'preserve'")

    def site_group(self) -> str:
        return VARIANTS[self.variant]

    def _spec(self, i: int, c) -> ConceptSpec:
        if not isinstance(c, (str, dict)):
            raise ConfigError(f"concepts[{i}] must be a string or a mapping with 'concept'")
        d = {"concept": c} if isinstance(c, str) else c
        try:  # the shared strict parsing: unknown keys name the nearest valid one
            return ConceptSpec.from_dict({"anchor": self.anchor, "negative": self.negative,
                                          "templates": list(self.templates), **d})
        except ConfigError as e:
            raise ConfigError(f"concepts[{i}]: {e}") from None

    def specs(self) -> list["ConceptSpec"]:
        """Every concept with its anchor, negative and templates resolved."""
        return self._specs

    def concept_names(self) -> list[str]:
        return [s.concept for s in self._specs]

    def preserve_spec(self) -> "PreserveSpec | None":
        return PreserveSpec(list(self.preserve)) if self.preserve else None


@dataclasses.dataclass
class PreserveSpec:
    """Prompts kept as they are: row t is (prompt, [prompt], [prompt]), trained with eta 0, so
    the target is the frozen model's own output on it."""

    texts: list[str]

    def n_templates(self) -> int:
        return len(self.texts)

    def prompts(self, t: int) -> tuple[str, list[str], list[str]]:
        p = self.texts[t]
        return p, [p], [p]


@dataclasses.dataclass
class ConceptSpec(StrictConfig):
    """One concept to erase. ``prompts(t)`` = (concept prompt, anchor prompts, negative prompts)
    in template ``t``; the target is mean(anchors) - eta (concept - mean(negatives))."""

    concept: str = field("", "the concept's text")
    anchor: str = field("", "anchor text ('a|b' averages several; '{concept}' is the concept)")
    negative: str = field("empty", "empty | anchor")
    templates: list[str] = field([], "contexts with one '{}'")

    def check(self) -> None:
        object.__setattr__(self, "concept", self.concept.strip())
        if not self.concept:
            raise ConfigError("the concept is empty; give its text (--concept circle)")
        if self.negative not in ("empty", "anchor"):
            raise ConfigError(f"negative must be empty or anchor, got {self.negative!r}")
        bad = [t for t in self.templates if t.count("{}") != 1]
        if bad:
            raise ConfigError(f"template {bad[0]!r} needs exactly one '{{}}' for the concept")

    def n_templates(self) -> int:
        return max(1, len(self.templates))

    def prompts(self, t: int) -> tuple[str, list[str], list[str]]:
        tpl = self.templates[t] if self.templates else "{}"
        fill = lambda x: " ".join(tpl.replace("{}", x).split())  # noqa: E731  ('' leaves no gap)
        anchors = [fill(a.replace("{concept}", self.concept)) for a in self.anchor.split("|")]
        return fill(self.concept), anchors, anchors if self.negative == "anchor" else [""]
