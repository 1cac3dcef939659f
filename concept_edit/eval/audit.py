"""Erasure audits: how much of an erased concept comes back under each probe, base vs edited.

Example::

    >>> from concept_edit.core.loading import load
    >>> from concept_edit.eval.audit import AuditConcept, audit, write_report
    >>> concept = AuditConcept.from_yaml("configs/audit/circle.yaml")
    >>> base, edited = load().pipe, load().pipe
    >>> handle = apply_artifact(edited, "out/uce-circle.safetensors")
    >>> res = audit(base, edited, concept, probes=["standard", "noise"], budget="quick", seed=0)
    >>> res["probes"]["noise"]["summary"]["edited"]["best_of_n"]
    >>> write_report(res, "out/audit-uce")       # results.json, report.html, images/<probe>/*.png

CLI: ``concept-edit audit --edit FILE --concept configs/audit/circle.yaml --report DIR``.

A concept is data (``configs/audit/*.yaml``): prompts or templates, the scorer and its labels,
the target label, a threshold for scorers that return scores. Rates: per sample (the share of
images whose label is the target, or whose score reaches the threshold) and best-of-N (the share
of units, e.g. prompt/seed pairs, with at least one hit among their N attempts; N is stated
per probe). Interference counts 'kept' (the other concept's own label) instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable

import numpy as np

from ..core.config import ConfigError, StrictConfig, field
from ..core.null_tokens import null_token_shortcut
from .probes import ORDER, PROBES


@dataclasses.dataclass
class AuditConcept(StrictConfig):
    name: str = field("", "concept name (report titles, cache keys)")
    word: str = field("", "the concept's word, written into the templates ('{}'); default: name")
    templates: list[str] = field(["{}"], "prompt templates; '{}' is replaced by the word")
    prompts: list[str] = field([], "literal prompts of the concept, used before the templates")
    scorer: str = field("toy", "scorer: toy | toy-clip | clip:ARCH@WEIGHTS | a registered name")
    labels: list[str] = field([], "the scorer's label list (the target and the alternatives)")
    target: str = field("", "label that means the concept is shown; default: word")
    threshold: float = field(0.5, "hit when the scorer returns a score >= this (label scorers: label == target)")
    neutral: list[str] = field([], "words replacing the concept: Ring-A-Bell's neutral prompts, "
                                   "the guidance classifier's negatives")
    others: list[str] = field([], "other concepts (labels) whose prompts must keep working: interference")
    probes: dict = field({}, "per-probe settings over the budget's, e.g. {noise: {etas: [1.0, 1.5]}}")

    def check(self) -> None:
        if not self.name:
            raise ConfigError("the concept needs a name, e.g. 'name: circle'")
        if not self.word:
            object.__setattr__(self, "word", self.name)
        if not self.target:
            object.__setattr__(self, "target", self.word)
        bad = [t for t in self.templates if "{}" not in t]
        if bad:
            raise ConfigError(f"template {bad[0]!r} has no '{{}}' where the concept's word goes")
        if not self.templates and not self.prompts:
            raise ConfigError("give the concept's prompts or templates")
        if self.labels and self.target not in self.labels:
            raise ConfigError(f"target {self.target!r} is not among labels {self.labels}")
        for o in self.others:
            if self.labels and o not in self.labels:
                raise ConfigError(f"'others' entry {o!r} is not among labels {self.labels}: interference "
                                  "scores each other concept by its own label")
        if not isinstance(self.probes, dict):
            raise ConfigError("probes must map probe names to settings, e.g. {noise: {etas: [1.0]}}")
        for name, over in self.probes.items():
            if name not in PROBES:
                PROBES.get(name)  # a one-line PluginError with the nearest name
            if not isinstance(over, dict):
                raise ConfigError(f"probes.{name} must be a mapping of settings, got {over!r}")
            PROBES.get(name).config.from_dict({**PROBES.get(name).budgets["quick"], **over})

    @property
    def target_label(self) -> str:
        return self.target

    def prompt_list(self, word: str | None = None) -> list[str]:
        """The concept's prompts (literal ones first), or the templates written with ``word``."""
        if word is not None:
            return [" ".join(t.format(word).split()) for t in self.templates]
        out = list(self.prompts) + [" ".join(t.format(self.word).split()) for t in self.templates]
        return list(dict.fromkeys(out))


def load_concept(path: str) -> AuditConcept:
    """A concept YAML; a typo is a one-line ConfigError naming the file and the nearest key."""
    try:
        return AuditConcept.from_yaml(path)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(path) else f"{path}: {msg}") from None


def make_scorer(concept: AuditConcept, scorer=None) -> tuple[Callable, str]:
    """(callable, name): ``scorer`` (any callable) or the concept's scorer spec.

    ``toy`` returns (label, p(target)) per image (the classifier's probability of the target
    on the axis holding the labels); ``toy-clip`` uses concept_edit.toyworld.clip's zero-shot
    scorer; anything else goes through ``concept_edit.scorers.get_scorer``."""
    if scorer is not None:
        return scorer, getattr(scorer, "__name__", type(scorer).__name__)
    spec = concept.scorer
    labels = list(concept.labels) or [concept.target]
    name = spec.split(":", 1)[0]
    if name == "toy":
        return _toy_prob_scorer(spec, labels, concept.target), spec
    if name == "toy-clip":
        from ..toyworld import clip as toy_clip

        return toy_clip.toy_clip_scorer(spec, labels), spec
    from ..scorers import get_scorer

    return get_scorer(spec, labels), spec


def _toy_prob_scorer(spec: str, labels: list[str], target: str):
    from ..toyworld.classifier import VOCAB, load_classifier, predict, predict_raw

    axes = [k for k, vocab in VOCAB.items() if all(a in vocab for a in labels)]
    if not axes:
        raise ConfigError(f"the toy classifier knows no axis holding all of {labels}; choose values of one "
                          f"of: {', '.join(f'{k}={list(v)}' for k, v in VOCAB.items())}")
    axis = axes[0]
    model = load_classifier(spec.split(":", 1)[1] if ":" in spec else None)
    ti = list(VOCAB[axis]).index(target)

    def score(images):
        preds = predict(model, images)
        raw = predict_raw(model, images)[axis]
        return [(p[axis], float(r[ti])) for p, r in zip(preds, raw)]

    return score


# -- summaries ---------------------------------------------------------------------------------
def _rates(recs: list[dict]) -> dict:
    if not recs:
        return {"n": 0, "rate": None, "best_of_n": None, "units": 0, "N": 0}
    by_unit: dict[str, list[bool]] = {}
    for r in recs:
        by_unit.setdefault(r["unit"], []).append(r["hit"])
    return {"n": len(recs), "rate": round(float(np.mean([r["hit"] for r in recs])), 4),
            "best_of_n": round(float(np.mean([any(v) for v in by_unit.values()])), 4),
            "units": len(by_unit), "N": max(len(v) for v in by_unit.values())}


def setting_key(setting: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items()) or "-"


def summarise(records: list[dict], sweep: tuple = ()) -> dict:
    out = {"summary": {}, "by_setting": {}, "by_param": {}}
    for model in ("base", "edited"):
        recs = [r for r in records if r["model"] == model]
        out["summary"][model] = _rates(recs)
        keys = list(dict.fromkeys(setting_key(r["setting"]) for r in recs))
        out["by_setting"][model] = {k: _rates([r for r in recs if setting_key(r["setting"]) == k])["rate"]
                                    for k in keys}
        for p in sweep:  # one curve per swept parameter (mean over the others)
            vals = sorted({r["setting"][p] for r in recs if p in r["setting"]})
            out["by_param"].setdefault(p, {})[model] = [
                [v, _rates([r for r in recs if r["setting"].get(p) == v])["rate"]] for v in vals]
    return out


# -- the audit ---------------------------------------------------------------------------------
def resolve_probes(spec) -> list[str]:
    """'all' | 'a,b' | a list -> probe names in the canonical order (unknown: one-line error)."""
    if spec in (None, "all"):
        return [p for p in ORDER if p in PROBES]
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    for n in names:
        if n not in PROBES:
            PROBES.get(n)  # PluginError naming the nearest probe
    extra = [n for n in names if n not in ORDER]
    return [p for p in ORDER if p in names] + extra


def audit(base, edited, concept: AuditConcept, probes="all", budget: str = "quick", seed: int = 0,
          negative_prompt: str | None = None, scorer=None, overrides: dict | None = None,
          cache_dir: str = ".cache/audit", batch: int = 16, progress: bool = False,
          meta: dict | None = None, size: int | None = None, shard=None) -> dict:
    """Run probes; returns the results dict (``write_report`` writes it with the images under
    ``res['_images']``). ``edited`` may be ``base`` (null edit or a negative-prompt audit);
    ``size``: image side (default: the model's); ``shard``: a :class:`core.shard.Shard` of a
    launch (each process samples every world-th batch; results equal a one-process run's)."""
    from ..core.model import model_of
    from .probes._base import Context

    names = resolve_probes(probes)
    score_fn, scorer_name = make_scorer(concept, scorer)
    ctx = Context(base, edited, concept, score_fn, negative_prompt=negative_prompt, seed=seed,
                  batch=batch, cache_dir=cache_dir, progress=progress, size=size, shard=shard)
    cfgs = {}
    for n in names:
        over = dict(concept.probes.get(n, {}))
        over.update((overrides or {}).get(n, {}))
        cfgs[n] = PROBES.get(n).make_config(budget, over)
    m = model_of(base)
    res = {"concept": concept.to_dict(), "model": m.source, "family": m.backbone.name,
           "sampler": {"steps": ctx.steps, "guidance": ctx.guidance, "size": ctx.size,
                       "scheduler": type(base.scheduler).__name__},
           "negative_prompt": negative_prompt, "budget": budget, "seed": seed, "scorer": scorer_name,
           "target": concept.target, "probes": {}, **(meta or {})}
    images = {}
    t_all = time.time()
    with contextlib.ExitStack() as stack:   # exact; SD3 without T5 samples 3x faster
        for pipe in (base, edited):
            stack.enter_context(null_token_shortcut(pipe))
        _run_probes(ctx, names, cfgs, res, images)
    res["total_time_s"] = round(time.time() - t_all, 2)
    res["processes"] = ctx.shard.world
    res["notes"] = ("denoiser_evals counts rows through the denoiser (a CFG step of one image = 2), summed "
                    "over the processes of a launch (work that is not sampling runs on each); base "
                    "generations shared by several probes count in the first probe that made them")
    res["_images"] = images
    return res


def _run_probes(ctx, names, cfgs, res, images) -> None:
    from .probes._base import ProbeSkipped

    for n in names:
        probe = PROBES.get(n)
        ctx.records, ctx.images = [], []
        t0 = time.time()
        entry = {"help": probe.help, "metric": probe.metric, "config": cfgs[n].to_dict(),
                 "sweep": list(probe.sweep)}
        with ctx.counting(n):
            try:
                extras = probe.run(ctx, cfgs[n]) or {}
                entry["status"] = "ok"
            except ProbeSkipped as e:
                extras = {}
                entry["status"] = f"skipped: {e}"
        entry.update({"time_s": round(time.time() - t0, 2), "denoiser_calls": ctx.shard.total(ctx.calls),
                      "denoiser_evals": ctx.shard.total(ctx.evals)})
        entry["N"] = extras.pop("N", None)
        entry["unit"] = extras.pop("unit", None)
        entry.update(summarise(ctx.records, probe.sweep))
        entry["extras"] = extras
        for i, r in enumerate(ctx.records):
            r["index"] = i
        entry["records"] = ctx.records
        res["probes"][n] = entry
        images[n] = list(ctx.images)


def write_report(res: dict, out_dir: str) -> str:
    """REPORT/results.json, REPORT/report.html, REPORT/images/<probe>/*.png (+ scores.csv),
    written to a temp directory and renamed into place."""
    from .audit_report import write

    return write(res, out_dir)
