"""Measure the toy world: classifier accuracy, VAE ceiling, prompt following, variety, speed.

Example::

    concept-edit toyworld evaluate --seeds 64 --json > eval.json

Every number of the model card comes from ``evaluate()``; partial prompts report the named
attributes' rates and, for each unnamed attribute, the share of its most and least common
value (variety: every value at least 10% of samples).
"""
from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.null_tokens import null_token_shortcut
from ..core.sampling import pipe_defaults
from .captions import all_prompts
from .classifier import load_classifier, predict, to_tensor
from .dataset import build
from .render import BACKGROUNDS, COLOUR_NAMES, SHAPES, SIZE_NAMES

ATTRS = ("shape", "colour", "size", "background")
VALUES = {"shape": SHAPES, "colour": COLOUR_NAMES, "size": SIZE_NAMES, "background": BACKGROUNDS}


@torch.inference_mode()
def sample_prompts(pipe, prompts: list[str], seeds: int, seed0: int = 0, steps: int | None = None,
                   guidance: float | None = None, batch: int = 64, progress: bool = True) -> np.ndarray:
    """Images for every (prompt, seed) pair, prompt-major: (len(prompts) * seeds, H, W, 3).
    Steps, guidance and size default to the model's own (toy UNet: 25, 5.0, 64 px; toy MMDiT: 2.0,
    unguided above 0.9 of the noise range): the native sampler, which draws ``pipe()``'s images."""
    from ..core.sampler import sample

    jobs = [(p, seed0 + s) for p in prompts for s in range(seeds)]
    out = []
    for i in tqdm(range(0, len(jobs), batch), desc="sample", disable=not progress):
        chunk = jobs[i:i + batch]
        with null_token_shortcut(pipe):   # exact; 2.8x on the toy MMDiT
            img = sample(pipe, [p for p, _ in chunk], seed=[s for _, s in chunk], steps=steps,
                         guidance=guidance).images
        out.append((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0, 64, 64, 3), np.uint8)


def rates(preds: list[dict], named: dict) -> dict:
    return {k: float(np.mean([p[k] == v for p in preds])) for k, v in named.items()}


def variety(preds: list[dict], attr: str) -> dict:
    c = Counter(p[attr] for p in preds)
    shares = {v: c.get(v, 0) / max(len(preds), 1) for v in VALUES[attr]}
    return {"min_share": min(shares.values()), "shares": shares}


def classifier_report(clf, n: int = 2000, seed: int = 777, vae=None) -> dict:
    ds = build(n, seed=seed)
    images = ds.images
    if vae is not None:
        with torch.inference_mode():
            rec = []
            for i in range(0, n, 250):
                z = vae.encode(to_tensor(images[i:i + 250])).latent_dist.mean
                rec.append(((vae.decode(z).sample.clamp(-1, 1) + 1) * 127.5).round().byte()
                           .permute(0, 2, 3, 1).numpy())
            images = np.concatenate(rec)
    preds = predict(clf, images)
    out = {}
    for k in ATTRS:
        truth = [VALUES[k][i] for i in getattr(ds, k)]
        out[k] = float(np.mean([p[k] == t for p, t in zip(preds, truth)]))
    out["radius_mae_px"] = float(np.mean([abs(p["radius"] - r) for p, r in zip(preds, ds.radius)]))
    out["n"] = n
    return out


def subset_prompts(prompts: list[dict], max_prompts: int, seed: int = 0) -> list[dict]:
    """A seeded subset of about ``max_prompts`` prompts, stratified by how many attributes
    they name (every stratum keeps at least one prompt), in the grammar's order."""
    if max_prompts >= len(prompts):
        return prompts
    rng = np.random.default_rng(seed)
    keep = []
    for k in sorted({len(p["named"]) for p in prompts}):
        idx = [i for i, p in enumerate(prompts) if len(p["named"]) == k]
        n = max(1, round(max_prompts * len(idx) / len(prompts)))
        keep += list(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return [prompts[i] for i in sorted(keep)]


def evaluate(pipe, seeds: int = 64, which: str = "all", classifier: str | None = None,
             batch: int = 64, seed0: int = 10_000, progress: bool = True,
             max_prompts: int | None = None) -> dict:
    clf = load_classifier(classifier)
    d = pipe_defaults(pipe)   # what sample_prompts uses: the model's own steps and guidance
    report: dict = {"seeds_per_prompt": seeds, "sampler": {"steps": d["steps"], "guidance": d["guidance"],
                                                           "guidance_below": d.get("guidance_below", 1.0),
                                                           "scheduler": type(pipe.scheduler).__name__}}
    report["classifier_renders"] = classifier_report(clf)
    report["classifier_vae_recon"] = classifier_report(clf, vae=pipe.vae)
    prompts = all_prompts()
    if which == "full":
        prompts = [p for p in prompts if len(p["named"]) == 4]
    elif which == "partial":
        prompts = [p for p in prompts if len(p["named"]) < 4]
    report["grammar_prompts"] = len(prompts)
    if max_prompts:
        prompts = subset_prompts(prompts, max_prompts)
    report["max_prompts"] = max_prompts  # the request; strata rounding may keep one or two more
    report["evaluated_prompts"] = len(prompts)
    imgs = sample_prompts(pipe, [p["prompt"] for p in prompts], seeds, seed0, batch=batch,
                          progress=progress)
    preds = predict(clf, imgs)
    per_prompt = []
    for i, p in enumerate(prompts):
        pr = preds[i * seeds:(i + 1) * seeds]
        row = {"prompt": p["prompt"], "rates": rates(pr, p["named"])}
        row["variety"] = {a: variety(pr, a)["min_share"] for a in ATTRS if a not in p["named"]}
        row["none_rate"] = float(np.mean([q["shape"] == "none" for q in pr]))
        per_prompt.append(row)
    for group, sel in (("full", lambda r: len(r["rates"]) == 4), ("partial", lambda r: len(r["rates"]) < 4)):
        rows = [r for r in per_prompt if sel(r)]
        if not rows:
            continue
        agg = {}
        for a in ATTRS:
            vals = [r["rates"][a] for r in rows if a in r["rates"]]
            if vals:
                agg[a] = float(np.mean(vals))
        summary = {"prompts": len(rows), "named_attribute_rates": agg}
        var = {}
        for a in ATTRS:
            vals = [r["variety"][a] for r in rows if a in r.get("variety", {})]
            if vals:
                var[a] = {"mean_min_share": float(np.mean(vals)), "worst_min_share": float(np.min(vals)),
                          "prompts_below_10pct": int(sum(v < 0.10 for v in vals))}
        if var:
            summary["unnamed_variety"] = var
        summary["none_rate"] = float(np.mean([r["none_rate"] for r in rows]))
        report[group] = summary
    report["per_prompt"] = per_prompt
    report["speed"] = speed(pipe)
    return report


def speed(pipe, n: int = 16, steps: int = 25, repeats: int = 2) -> dict:
    """The model's own sampler (its guidance; unguided steps skip the unconditional pass)."""
    from ..core.sampler import sample

    d = pipe_defaults(pipe)
    best = float("inf")
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        sample(pipe, ["a red circle on a plain background"] * n, seed=0, steps=steps)
        if r:  # the first call warms up
            best = min(best, time.perf_counter() - t0)
    return {"images": n, "steps": steps, "seconds": round(best, 3), "guidance": d["guidance"],
            "guidance_below": d.get("guidance_below", 1.0), "threads": torch.get_num_threads()}
