"""UCE configuration (strict: unknown keys are errors naming the nearest key).

Example::

    >>> from concept_edit.methods.uce.config import UceConfig
    >>> cfg = UceConfig(edit=["circle"], preserve=["square", "star"])
    >>> cfg.guides()                       # one guide per edited concept ('' by default)
    ['']
"""
from __future__ import annotations

import dataclasses

from ...core.config import ConfigError, StrictConfig, field

MODES = ("erase", "moderate", "debias")
TOKEN_POLICIES = ("last", "last+eos", "all")
PRESERVE_TOKENS = ("all", "last")


@dataclasses.dataclass
class UceConfig(StrictConfig):
    mode: str = field("erase", "erase (toward guides) | moderate (many words toward '') | debias")
    edit: list[str] = field([], "concepts to edit (erase/moderate) or to debias")
    guide: list[str] = field([""], "guide concept per edited concept, or one for all ('' = erase); "
                                   "'a|b|c' averages several guides")
    guide_eta: float = field(0.0, "push targets past the guide, away from the concept: "
                                  "t = g + guide_eta (g - c); 0 = the reference's targets")
    guide_etas: list[float] = field([], "one guide_eta per edited concept (overrides guide_eta); "
                                        "attributes often want 0 where objects want 1")
    preserve: list[str] = field([], "concepts whose keys/values must not move (expanded by the templates)")
    preserve_tokens: str = field("all", "rows of each preserved prompt: all (every token: the paper-era "
                                        "reference) | last (the preserved concept's last token: the "
                                        "current reference)")
    preserve_empty: bool = field(True, "also preserve '' (the paper-era reference; the current "
                                       "reference does not)")
    erase_scale: float = field(1.0, "s_e: weight of the edit constraints")
    preserve_scale: float = field(1.0, "s_p: weight of the preserve constraints")
    lamb: float = field(0.5, "lambda: ridge toward the original weights")
    token_policy: str = field("last+eos", "edited tokens: last | last+eos | all (see docs)")
    sites: str = field("text_kv", "site group to edit: text_kv, or text_in (FLUX context_embedder)")
    pooled: bool = field(True, "also edit the layer reading the pooled text embedding where the model "
                               "has one (SD3/FLUX AdaLN input; on the toy MMDiT it alone decides the "
                               "shape, docs/families.md); false = the token stream only")
    templates: list[str] = field(["{}"], "prompt templates a concept expands into ('{}' = concept)")
    timesteps: list[int] = field([999, 750, 500, 250, 1],
                                 "timesteps whose layer inputs are constrained when the edited "
                                 "layers read timestep-dependent text (MMDiT add_k/v_proj)")
    # debias
    attributes: list[str] = field([], "debias: attribute words, e.g. ['red', 'blue']")
    ratios: list[float] = field([], "debias: wanted share of each attribute (sums to <= 1)")
    rounds: int = field(8, "debias: generate-score-resolve rounds")
    step: float = field(0.5, "debias: how far alphas move per unit of ratio error (1.0 can oscillate)")
    debias_samples: int = field(64, "debias: images per round per concept")
    debias_tolerance: float = field(0.05, "debias: stop when every ratio is this close")
    scorer: str = field("toy", "debias: attribute scorer ('toy' classifier, or 'clip:ARCH@WEIGHTS')")
    seed: int = field(0, "seed of debias sampling")

    def check(self) -> None:
        if self.preserve_tokens not in PRESERVE_TOKENS:
            raise ConfigError(f"preserve_tokens must be one of {', '.join(PRESERVE_TOKENS)}, "
                              f"got {self.preserve_tokens!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.token_policy not in TOKEN_POLICIES:
            raise ConfigError(f"token_policy must be one of {', '.join(TOKEN_POLICIES)}, "
                              f"got {self.token_policy!r}")
        if not self.edit:
            raise ConfigError("nothing to edit: give at least one concept (--erase/--debias or 'edit:')")
        if self.mode != "debias" and len(self.guide) not in (1, len(self.edit)):
            raise ConfigError(f"give one guide or one per edited concept ({len(self.edit)}), "
                              f"got {len(self.guide)}")
        if self.guide_etas and len(self.guide_etas) != len(self.edit):
            raise ConfigError(f"give one guide_etas value per edited concept ({len(self.edit)}), "
                              f"got {len(self.guide_etas)}")
        if self.lamb < 0 or self.erase_scale < 0 or self.preserve_scale < 0:
            raise ConfigError("lamb, erase_scale and preserve_scale must be >= 0")
        if any("{}" not in t for t in self.templates):
            raise ConfigError("every template must contain '{}' where the concept goes")
        if self.mode == "debias":
            if not self.attributes:
                raise ConfigError("debias needs attributes, e.g. --attributes 'red; blue'")
            if len(self.ratios) != len(self.attributes):
                raise ConfigError(f"give one ratio per attribute ({len(self.attributes)}), got "
                                  f"{len(self.ratios)}")
            if any(r < 0 for r in self.ratios) or sum(self.ratios) > 1 + 1e-6:
                raise ConfigError("ratios must be >= 0 and sum to at most 1")

    def etas(self) -> list[float]:
        return [float(e) for e in self.guide_etas] or [self.guide_eta] * len(self.edit)

    def guides(self) -> list[str]:
        if self.mode == "moderate":
            return [""] * len(self.edit)
        return self.guide * len(self.edit) if len(self.guide) == 1 else list(self.guide)
