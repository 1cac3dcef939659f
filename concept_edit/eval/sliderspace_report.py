"""SliderSpace on the toy world: what each discovered slider moves, by the toy classifier.

Example::

    >>> from concept_edit.eval.sliderspace_report import slider_report, slider_sheet
    >>> rep = slider_report(pipe, res.artifact, "a square", n_seeds=64)
    >>> rep["sliders"][0]["main"], rep["sliders"][0]["purity"]     # ('colour', 0.93)
    >>> rep["summary"]                                               # coverage, shape kept, entropy
    >>> sheet = slider_sheet(pipe, res.artifact, "a square", scales=[-2, -1, 0, 1, 2], seeds=3)

Families: ``colour``, ``size`` and ``background`` from the toy classifier; ``position`` from the
image itself, because the classifier's labels have no position: the shape is the saturated
pixels (max - min over RGB > 60; every toy background is grey, every toy colour saturated) and
its centroid moving more than ``POSITION_PX`` pixels between the base image and the slider's
image of the same seed counts as a position change. A change is a label differing from the base
image of the same seed. Purity of a slider = the share of its changes at scales +-2 (seeds x
families) that fall in its main family. Entropy: the classifier's labels of the attributes the
prompt leaves unnamed, over seeds, for the base model and with every slider at a random scale
in [-2, 2] (one draw per seed, the same seeds).
"""
from __future__ import annotations

import math
import time

import numpy as np

from ..core.lora import lora_router
from ..core.sampling import SampleSettings, generate
from ..toyworld.classifier import load_classifier, predict
from ..toyworld.render import SHAPES

FAMILIES = ("colour", "size", "background", "position")
LABELLED = ("colour", "size", "background")
POSITION_PX = 6.0
MIN_SATURATION = 60
SEED0 = 50_000  # evaluation seeds, away from the sampled ones (0 ..)


def foreground_centroid(images: np.ndarray, min_saturation: int = MIN_SATURATION) -> np.ndarray:
    """(N, 2) centroid (x, y) in pixels of the saturated pixels of each uint8 image; NaN when
    no pixel is saturated."""
    im = np.asarray(images).astype(np.int16)
    mask = (im.max(-1) - im.min(-1)) > min_saturation
    h, w = mask.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w]
    n = mask.sum((1, 2)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (mask * xs).sum((1, 2)) / n
        cy = (mask * ys).sum((1, 2)) / n
    return np.stack([cx, cy], 1)


def describe(images: np.ndarray, clf) -> list[dict]:
    """Classifier labels + the foreground centroid of each image."""
    preds = predict(clf, images)
    cen = foreground_centroid(images)
    return [dict(p, fx=float(c[0]), fy=float(c[1])) for p, c in zip(preds, cen)]


def changed(base: dict, new: dict) -> dict[str, bool]:
    out = {f: base[f] != new[f] for f in LABELLED}
    d = math.hypot(new["fx"] - base["fx"], new["fy"] - base["fy"])
    out["position"] = bool(d > POSITION_PX) if not math.isnan(d) else False
    return out


def _entropy(labels: list[str]) -> float:
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _gen(pipe, prompt, n, seed0, batch=64):
    return generate(pipe, SampleSettings(prompt=prompt, n=n, seed=seed0, batch=batch), progress=False)


def _mode(values):
    vals, counts = np.unique(np.asarray(values), return_counts=True)
    return str(vals[counts.argmax()])


def slider_report(pipe, artifact, prompt: str, n_seeds: int = 64, scales=(-2, -1, 1, 2),
                  purity_scales=(-2, 2), zero_seeds: int = 8, random_range: float = 2.0,
                  seed0: int = SEED0, classifier: str | None = None, start: float | None = None,
                  entropy: bool = True, progress: bool = False) -> dict:
    """Per slider: changes per family at ``purity_scales``, main family, purity, shape kept at
    every scale, the main family's values at the two ends; scale 0 = base exactly on
    ``zero_seeds`` seeds; summary: families covered by the top 6, the lowest shape-kept share,
    entropy of the unnamed attributes (base vs random slider scales; ``entropy=False`` skips it).
    ``start``: the sliders' inference start fraction (default: each file's)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    clf = load_classifier(classifier)
    shape = next((s for s in SHAPES if s in prompt.split()), None)
    base_imgs = _gen(pipe, prompt, n_seeds, seed0)
    base = describe(base_imgs, clf)
    n_zero = min(zero_seeds, n_seeds)
    base_zero = _gen(pipe, prompt, n_zero, seed0)  # the same batch as the scale-0 runs: bit for bit
    router = lora_router(pipe)
    names = list(artifact.names)
    rows = []
    bar = tqdm(total=len(names) * len(scales), desc="report", unit="sweep", disable=not progress)
    for k, name in enumerate(names):
        h = artifact.apply(pipe, scale=0.0, index=k, name=f"report_{k}", start=start)
        try:
            zero = _gen(pipe, prompt, n_zero, seed0)
            rec = {"name": name, "scale0_equals_base": bool(np.array_equal(zero, base_zero)),
                   "changes": {f: 0 for f in FAMILIES}, "shape_kept": {}, "ends": {}}
            per_scale = {}
            for s in scales:
                router.set_scale(h.name, s)
                desc = describe(_gen(pipe, prompt, n_seeds, seed0), clf)
                per_scale[s] = desc
                if shape:
                    rec["shape_kept"][f"{s:g}"] = round(float(np.mean([d["shape"] == shape for d in desc])), 4)
                if s in purity_scales:
                    for b, d in zip(base, desc):
                        for f, c in changed(b, d).items():
                            rec["changes"][f] += int(c)
                bar.update(1)
        finally:
            h.remove()
        total = sum(rec["changes"].values())
        main = max(FAMILIES, key=lambda f: rec["changes"][f]) if total else None
        rec["main"] = main
        rec["purity"] = round(rec["changes"][main] / total, 4) if total else 0.0
        rec["change_rate"] = round(total / (len(purity_scales) * n_seeds), 4)
        lo, hi = min(purity_scales), max(purity_scales)
        if main in LABELLED:
            rec["ends"] = {f"{lo:g}": _mode([d[main] for d in per_scale[lo]]),
                           "0": _mode([b[main] for b in base]), f"{hi:g}": _mode([d[main] for d in per_scale[hi]])}
        elif main == "position":
            def mean_xy(ds):
                return [round(float(np.nanmean([d["fx"] for d in ds])), 1), round(float(np.nanmean([d["fy"] for d in ds])), 1)]
            rec["ends"] = {f"{lo:g}": mean_xy(per_scale[lo]), "0": mean_xy(base), f"{hi:g}": mean_xy(per_scale[hi])}
        rows.append(rec)
    bar.close()

    # entropy of the unnamed attributes: base vs every slider at a random scale per seed
    unnamed = [f for f in LABELLED if not any(v in prompt.split() for v in _values(f))]
    ent, shape_random = None, None
    if entropy:
        rng = np.random.default_rng(seed0)
        handles = [artifact.apply(pipe, scale=0.0, index=k, name=f"random_{k}", start=start)
                   for k in range(len(names))]
        rand_desc = []
        try:
            draws = rng.uniform(-random_range, random_range, size=(n_seeds, len(names)))
            for i in tqdm(range(n_seeds), desc="random scales", disable=not progress):
                for h, s in zip(handles, draws[i]):
                    router.set_scale(h.name, float(s))
                rand_desc += describe(_gen(pipe, prompt, 1, seed0 + i), clf)
        finally:
            for h in reversed(handles):
                h.remove()
        ent = {f: {"base": round(_entropy([b[f] for b in base]), 4),
                   "random_sliders": round(_entropy([d[f] for d in rand_desc]), 4)} for f in unnamed}
        shape_random = round(float(np.mean([d["shape"] == shape for d in rand_desc])), 4) if shape else None
    top = rows[:6]
    kept = [v for r in rows for v in r["shape_kept"].values()]
    summary = {
        "n_seeds": n_seeds, "seed0": seed0, "prompt": prompt, "shape": shape,
        "scale0_equals_base": all(r["scale0_equals_base"] for r in rows),
        "purity_ge_0.7": sum(r["purity"] >= 0.7 for r in rows),
        "top6_families": sorted({r["main"] for r in top if r["main"]}),
        "shape_kept_min": min(kept) if kept else None,
        "shape_kept_base": round(float(np.mean([b["shape"] == shape for b in base])), 4) if shape else None,
        "entropy_unnamed": ent, "shape_kept_random_sliders": shape_random,
        "position_px": POSITION_PX, "seconds": round(time.perf_counter() - t0, 1),
    }
    summary["top6_family_count"] = len(summary["top6_families"])
    return {"sliders": rows, "summary": summary}


def _values(family: str):
    from ..toyworld.classifier import VOCAB

    return VOCAB[family]


def manifest_extra(report: dict) -> list[dict]:
    """Per slider, what the manifest records: the family the toy classifier says it moves."""
    return [{"moves": r["main"], "purity": r["purity"], "change_rate": r["change_rate"], "ends": r["ends"]}
            for r in report["sliders"]]


def slider_sheet(pipe, artifact, prompt: str, scales=(-2, -1, 0, 1, 2), seeds: int = 3, seed0: int = SEED0,
                 tile: int = 64, labels: list[str] | None = None, start: float | None = None,
                 progress: bool = False) -> np.ndarray:
    """Rows = sliders, columns = scales x seeds (the same seeds in every row), labelled."""
    from tqdm.auto import tqdm

    from .grid import labelled_grid

    router = lora_router(pipe)
    base = _gen(pipe, prompt, seeds, seed0) if 0 in scales else None
    tiles = []
    for k, name in enumerate(tqdm(artifact.names, desc="sheet", disable=not progress)):
        h = artifact.apply(pipe, scale=0.0, index=k, name=f"sheet_{k}", start=start)
        try:
            row = []
            for s in scales:
                if s == 0 and base is not None:  # scale 0 is the base image exactly (tested)
                    row += list(base)
                    continue
                router.set_scale(h.name, s)
                row += list(_gen(pipe, prompt, seeds, seed0))
        finally:
            h.remove()
        tiles.append(row)
    cols = [f"{s:g}" + (f" s{j}" if seeds > 1 else "") for s in scales for j in range(seeds)]
    rows = labels or list(artifact.names)
    return labelled_grid(tiles, cols=cols, rows=rows, tile=tile,
                         title=f"{prompt!r}: rows = sliders, columns = scale x seed (seeds {seed0}..)")
