"""Method quality on the toy world: erasure tables and slider sweeps, scored by the classifier.

Example::

    >>> from concept_edit.eval.toy import erasure_report, slider_report
    >>> rep = erasure_report(pipe, {"shape": "circle"}, edit="out/uce-circle.safetensors")
    >>> rep["target"]["edited"], rep["others"]["keep_ratio"]
    >>> sw = slider_report(pipe, "out/size.safetensors", scales=[-2, -1, 0, 1, 2])
    >>> sw["spearman"], sw["ratio_hi_lo"]

CLI: ``concept-edit toyworld erasure --apply FILE --concept shape=circle`` and
``concept-edit toyworld slider --apply FILE``. Seeds are fixed per prompt, so base and edited
images come from the same noise.
"""
from __future__ import annotations

import contextlib

import numpy as np
from scipy.stats import spearmanr

from ..core.artifacts import apply_artifact
from ..core.lora import lora_router
from ..toyworld.captions import all_prompts
from ..toyworld.classifier import load_classifier, predict
from ..toyworld.evaluate import sample_prompts
from ..toyworld.render import BACKGROUNDS, COLOUR_NAMES, SHAPES

AXES = ("shape", "colour", "size", "background")


def _pick(rows, n, seed):
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    return [rows[i] for i in sorted(idx)]


def concept_prompts(concept: dict, n_target: int = 4, n_other: int = 8, seed: int = 0):
    """Prompts naming the concept (incl. the shortest one) and full prompts that name another
    value on the same axis (for collateral damage)."""
    (axis, value), = concept.items()
    allp = all_prompts()
    named = [p for p in allp if p["named"].get(axis) == value]
    named.sort(key=lambda p: (len(p["named"]), p["prompt"]))
    target = [named[0]] + _pick(named[1:], n_target - 1, seed)
    others = [p for p in allp if len(p["named"]) == 4 and p["named"][axis] != value]
    return target, _pick(others, n_other, seed + 1)


@contextlib.contextmanager
def applied(pipe, edits):
    """Apply artifact paths (or (path, scale) pairs) for the block."""
    handles = []
    try:
        for e in edits or []:
            path, scale = (e, 1.0) if isinstance(e, str) else e
            handles.append(apply_artifact(pipe, path, scale=scale, name=f"eval{len(handles)}"))
        yield handles
    finally:
        for h in reversed(handles):
            h.remove()


def score(pipe, prompts: list[dict], seeds: int, clf, seed0: int = 50_000, batch: int = 64):
    imgs = sample_prompts(pipe, [p["prompt"] for p in prompts], seeds, seed0, batch=batch)
    preds = predict(clf, imgs)
    return [preds[i * seeds:(i + 1) * seeds] for i in range(len(prompts))]


def _rate(groups, prompts, key_fn):
    vals = [np.mean([key_fn(q, p) for q in g]) for g, p in zip(groups, prompts)]
    return float(np.mean(vals))


def retain_prompts(concept: dict, n: int = 8, seed: int = 0) -> list[dict]:
    """Full prompts that name the concept with every other attribute ("a small yellow circle on a
    striped background"): where in-prompt retention is measured."""
    (axis, value), = concept.items()
    full = [p for p in all_prompts() if len(p["named"]) == 4 and p["named"][axis] == value]
    return _pick(full, n, seed + 2)


def retention(base_groups, edited_groups, prompts: list[dict], concept: dict) -> dict:
    """In-prompt retention on prompts that name the erased concept with other attributes.

    ``*_groups[i]``: the classifier's labels for prompt i over the same seeds, base and edited.
    Per other named attribute: the share of samples showing it as prompted, base and edited,
    and their ratio (the issue's bar: >= 0.9). ``replacement``: what the concept's axis shows
    instead on the edited samples where the concept is gone (one value taking every replaced
    sample is a finding, not a success)."""
    from collections import Counter

    (axis, value), = concept.items()
    attrs = {}
    for a in AXES:
        if a == axis:
            continue
        rows = [(gb, ge, p) for gb, ge, p in zip(base_groups, edited_groups, prompts) if a in p["named"]]
        if not rows:
            continue
        b = float(np.mean([q[a] == p["named"][a] for gb, _, p in rows for q in gb]))
        e = float(np.mean([q[a] == p["named"][a] for _, ge, p in rows for q in ge]))
        attrs[a] = {"base": b, "edited": e, "ratio": e / b if b else float("nan"), "prompts": len(rows)}
    replaced = Counter(q[axis] for g in edited_groups for q in g if q[axis] != value)
    n = sum(replaced.values())
    shares = {k: c / n for k, c in sorted(replaced.items())} if n else {}
    top = max(shares, key=shares.get) if shares else None
    return {"attributes": attrs, "min_ratio": min((v["ratio"] for v in attrs.values()), default=float("nan")),
            "replacement": {"n": n, "shares": shares, "top": top, "top_share": shares.get(top, 0.0)}}


def erasure_report(pipe, concept: dict, edit=None, seeds: int = 64, clf=None, base=None,
                   n_target: int = 4, n_other: int = 8, n_retain: int = 8) -> dict:
    """Rates for base and edited model; ``base`` reuses an earlier report's base predictions.
    ``n_retain`` full prompts naming the concept measure in-prompt retention (0 = skip)."""
    (axis, value), = concept.items()
    clf = clf or load_classifier()
    target, others = concept_prompts(concept, n_target, n_other)
    retain = retain_prompts(concept, n_retain) if n_retain else []
    if base is None:
        base = {"target": score(pipe, target, seeds, clf), "others": score(pipe, others, seeds, clf)}
    if retain and "retain" not in base:
        base["retain"] = score(pipe, retain, seeds, clf)
    with applied(pipe, edit if isinstance(edit, list) else [edit] if edit else []):
        ed = {"target": score(pipe, target, seeds, clf), "others": score(pipe, others, seeds, clf)}
        if retain:
            ed["retain"] = score(pipe, retain, seeds, clf)

    def shows(q, p):
        return q[axis] == value

    rep = {"concept": concept, "seeds": seeds, "target_prompts": [p["prompt"] for p in target],
           "other_prompts": [p["prompt"] for p in others]}
    rep["target"] = {"base": _rate(base["target"], target, shows), "edited": _rate(ed["target"], target, shows)}
    keep_b = _rate(base["others"], others, lambda q, p: q[axis] == p["named"][axis])
    keep_e = _rate(ed["others"], others, lambda q, p: q[axis] == p["named"][axis])
    rep["others"] = {"axis": axis, "base": keep_b, "edited": keep_e,
                     "keep_ratio": keep_e / keep_b if keep_b else float("nan"),
                     "leak_rate_of_erased": _rate(ed["others"], others, shows)}
    for a in AXES:
        if a == axis:
            continue
        b = _rate(base["others"], others, lambda q, p, a=a: q[a] == p["named"][a])
        e = _rate(ed["others"], others, lambda q, p, a=a: q[a] == p["named"][a])
        rep["others"][f"{a}_acc"] = {"base": b, "edited": e, "delta_points": 100 * (e - b)}
    if retain:
        rep["in_prompt"] = {"prompts": [p["prompt"] for p in retain],
                            "concept_shown": {"base": _rate(base["retain"], retain, shows),
                                              "edited": _rate(ed["retain"], retain, shows)},
                            **retention(base["retain"], ed["retain"], retain, concept)}
    rep["_base"] = base
    return rep


def strip(rep: dict) -> dict:
    return {k: v for k, v in rep.items() if not k.startswith("_")}


SLIDER_PROMPTS = ["a circle", "a square", "a triangle", "a star", "a red circle",
                  "a blue square on a plain background", "a green triangle on a dotted background",
                  "a yellow star on a striped background"]


def sweep(pipe, name: str, scales, prompts, seeds, clf, others: dict | None = None):
    """Predictions per scale of adapter ``name`` (other adapters at ``others`` scales)."""
    router = lora_router(pipe)
    out = {}
    for s in scales:
        router.set_scale(name, s)
        for n, v in (others or {}).items():
            router.set_scale(n, v)
        rows = score(pipe, [{"prompt": p} for p in prompts], seeds, clf)
        out[s] = [q for r in rows for q in r]
    return out


def slider_metrics(preds: dict, scales, metric: str = "radius") -> dict:
    def value(q):
        return q["radius"] if metric == "radius" else float(q["background"] == metric)

    means = {s: float(np.mean([value(q) for q in preds[s]])) for s in scales}
    zero = preds[0.0] if 0.0 in preds else preds[scales[len(scales) // 2]]
    keep = {}
    for a in ("shape", "colour", "background") if metric == "radius" else ("shape", "colour"):
        keep[a] = {s: float(np.mean([q[a] == z[a] for q, z in zip(preds[s], zero)])) for s in scales}
    rho = spearmanr(list(scales), [means[s] for s in scales]).statistic
    lo, hi = means[min(scales)], means[max(scales)]
    return {"metric": metric, "mean": means, "spearman": float(rho),
            "ratio_hi_lo": hi / lo if lo else float("inf"), "effect": hi - lo,
            "same_as_scale0": keep,
            "worst_same_as_scale0": min(min(v.values()) for v in keep.values())}


def slider_report(pipe, path: str, scales=(-2, -1, 0, 1, 2), prompts=SLIDER_PROMPTS, seeds: int = 64,
                  metric: str = "radius", start: float | None = None, clf=None) -> dict:
    clf = clf or load_classifier()
    scales = [float(s) for s in scales]
    h = apply_artifact(pipe, path, start=start, name="sweep")
    try:
        preds = sweep(pipe, "sweep", scales, prompts, seeds, clf)
    finally:
        h.remove()
    rep = slider_metrics(preds, scales, metric)
    rep.update({"file": path, "prompts": list(prompts), "seeds": seeds, "start": start})
    return rep


def composition_report(pipe, a: tuple[str, str], b: tuple[str, str], s: float = 2.0,
                       prompts=SLIDER_PROMPTS, seeds: int = 64, clf=None) -> dict:
    """Each slider's effect (metric at +s minus at -s) alone and with the other at +s."""
    clf = clf or load_classifier()
    (pa, ma), (pb, mb) = a, b
    ha = apply_artifact(pipe, pa, name="A")
    hb = apply_artifact(pipe, pb, name="B")
    try:
        def eff(name, metric, other, other_scale):
            p = sweep(pipe, name, [-s, s], prompts, seeds, clf, {other: other_scale})
            return slider_metrics(p, [-s, s], metric)["effect"]

        out = {"A": {"file": pa, "metric": ma, "solo": eff("A", ma, "B", 0.0), "composed": eff("A", ma, "B", s)},
               "B": {"file": pb, "metric": mb, "solo": eff("B", mb, "A", 0.0), "composed": eff("B", mb, "A", s)}}
    finally:
        hb.remove()
        ha.remove()
    for k in ("A", "B"):
        out[k]["kept"] = out[k]["composed"] / out[k]["solo"] if out[k]["solo"] else float("nan")
    return out


VALUES = {"shape": SHAPES, "colour": COLOUR_NAMES, "background": BACKGROUNDS}
