"""Diversity distillation on the toy world: the table and strips of docs/distill.md (JSON out).

    python scripts/distill_quality.py [--seeds 64] [--out out/distill] [--slider out/size.safetensors]

Runs, all on the same seeds: the base (its own 25 DDIM steps, CFG 5), the base on the student's
4 timesteps, the student (4 steps, no CFG), and the hybrid (1 base step, CFG 5, then the student).
- fidelity: full prompts (every attribute named), toy-classifier rate of each named attribute;
- diversity: partial prompts, entropy (bits) of each unnamed attribute, toy-CLIP mean pairwise
  distance and Vendi score, averaged over prompts;
- cost: wall seconds per image of the sampling call, measured in this run (batch ``--batch``);
- slider transfer (``--slider``, a base-trained size slider): mean radius at +2 minus at -2 on
  the base (the file's start), on the student and on the hybrid (slider on from step 0 or 1), and
  the rate of the prompt's colour / background at +-2 relative to scale 0 on the same model.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from concept_edit.core.io import atomic_write_text
from concept_edit.core.loading import load
from concept_edit.core.sampler import sample
from concept_edit.eval.diversity import diversity_report
from concept_edit.methods.distill import apply_slider, apply_to_pair, hybrid_sample
from concept_edit.toyworld.captions import all_prompts, parse
from concept_edit.toyworld.classifier import load_classifier, predict

TS = [999, 749, 499, 249]
PARTIAL = ["a circle", "a square", "a red triangle", "a large star", "a blue circle",
           "a small square on a plain background", "a green star on a dotted background", "a triangle"]
SLIDER = ["a red circle on a dotted background", "a blue square on a plain background",
          "a green triangle on a striped background", "a yellow star on a dotted background"]
ATTRS = ("shape", "colour", "size", "background")


def u8(x):
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def runner(base, turbo, name):
    """images(prompts, seeds) -> (uint8 images, seconds of sampling) for one of the four runs."""
    def go(prompts, seeds):
        t0 = time.perf_counter()
        if name == "base":
            r = sample(base.pipe, prompts, seed=seeds)
        elif name == "base-4":
            r = sample(base.pipe, prompts, seed=seeds, timesteps=TS, guidance=5.0)
        elif name == "student":
            r = hybrid_sample(base.pipe, turbo.pipe, prompts, seed=seeds, switch=0, allow_pure=True, timesteps=TS)
        else:
            r = hybrid_sample(base.pipe, turbo.pipe, prompts, seed=seeds, switch=1, timesteps=TS,
                              base_guidance=5.0, distilled_guidance=0.0)
        return u8(r.images), time.perf_counter() - t0
    return go


def batched(go, prompts_seeds, batch):
    imgs, secs = [], 0.0
    for i in range(0, len(prompts_seeds), batch):
        chunk = prompts_seeds[i:i + batch]
        im, s = go([p for p, _ in chunk], [s for _, s in chunk])
        imgs.append(im)
        secs += s
    return np.concatenate(imgs), secs


def full_prompts(n, seed=5):
    full = [p["prompt"] for p in all_prompts() if len(p["named"]) == 4]
    return [full[i] for i in np.random.default_rng(seed).choice(len(full), n, replace=False)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument("--seed0", type=int, default=20_000)
    ap.add_argument("--full", type=int, default=8, help="seeded full prompts for fidelity")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--turbo", default="weights/toy-turbo")
    ap.add_argument("--slider", default=None, help="a base-trained size slider (configs/sliders/toy-size.yaml)")
    ap.add_argument("--out", default="out/distill")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    base, turbo = load("weights/toy-world"), load(a.turbo)
    clf = load_classifier()
    seeds = [a.seed0 + s for s in range(a.seeds)]
    full = full_prompts(a.full)
    rep = {"seeds": a.seeds, "timesteps": TS, "full_prompts": full, "partial_prompts": PARTIAL, "runs": {}}
    for name in ("base", "base-4", "student", "hybrid-1"):
        go = runner(base, turbo, name)
        jobs = [(p, s) for p in full for s in seeds]
        imgs, secs = batched(go, jobs, a.batch)
        preds = predict(clf, imgs)
        fid = {k: float(np.mean([q[k] == parse(p)[k] for q, (p, _) in zip(preds, jobs)])) for k in ATTRS}
        div = {"entropy": {k: [] for k in ATTRS}, "pairwise_distance": [], "vendi": []}
        for p in PARTIAL:
            im, s2 = batched(go, [(p, s) for s in seeds], a.batch)
            secs += s2
            d = diversity_report(im)
            for k in ATTRS:
                if k not in parse(p):
                    div["entropy"][k].append(d["entropy"][k])
            div["pairwise_distance"].append(d["pairwise_distance"])
            div["vendi"].append(d["vendi"])
        n_img = len(jobs) + len(PARTIAL) * a.seeds
        row = {"fidelity": fid, "unnamed_entropy": {k: float(np.mean(v)) for k, v in div["entropy"].items() if v},
               "pairwise_distance": float(np.mean(div["pairwise_distance"])),
               "vendi": float(np.mean(div["vendi"])), "seconds_per_image": secs / n_img}
        row["mean_unnamed_entropy"] = float(np.mean(list(row["unnamed_entropy"].values())))
        rep["runs"][name] = row
        print(name, json.dumps(row))
    r = rep["runs"]
    rep["ratios"] = {
        "student_fidelity_vs_base": {k: r["student"]["fidelity"][k] / r["base"]["fidelity"][k] for k in ATTRS},
        "hybrid_fidelity_vs_student": {k: r["hybrid-1"]["fidelity"][k] / max(r["student"]["fidelity"][k], 1e-9)
                                       for k in ATTRS},
        "student_entropy_vs_base": r["student"]["mean_unnamed_entropy"] / r["base"]["mean_unnamed_entropy"],
        "hybrid_entropy_vs_base": r["hybrid-1"]["mean_unnamed_entropy"] / r["base"]["mean_unnamed_entropy"],
        "hybrid_cost_vs_student": r["hybrid-1"]["seconds_per_image"] / r["student"]["seconds_per_image"],
        "student_pairwise_vs_base": r["student"]["pairwise_distance"] / r["base"]["pairwise_distance"],
        "hybrid_pairwise_vs_base": r["hybrid-1"]["pairwise_distance"] / r["base"]["pairwise_distance"],
    }
    print("ratios", json.dumps(rep["ratios"]))
    if a.slider:
        rep["slider"] = slider_transfer(base, turbo, a.slider, seeds, clf, a.batch)
        print("slider", json.dumps(rep["slider"]))
    atomic_write_text(os.path.join(a.out, "quality.json"), json.dumps(rep, indent=1))
    print("wrote", os.path.join(a.out, "quality.json"))


def slider_transfer(base, turbo, path, seeds, clf, batch):
    """Radius effect (+2 minus -2) and colour/background kept (rate at +-2 / rate at 0)."""
    jobs = [(p, s) for p in SLIDER for s in seeds]
    out = {}
    # step 2 of the student's grid (t = 499) is the first at or after the file's own start on the
    # base (0.24 of 25 DDIM steps = step 6, t = 721): the start carried over as a timestep
    for name, start in (("base", None), ("student", 0), ("student", 1), ("student", 2), ("hybrid-1", 1),
                        ("hybrid-1", 2)):
        go = runner(base, turbo, name)
        key = name if start is None else f"{name}@step{start}"
        per = {}
        for scale in (-2.0, 0.0, 2.0):
            if name == "base":
                hs = [apply_slider(base.pipe, path, scale=scale, name="q")]  # the file's own start
            elif name == "student":
                hs = [apply_slider(turbo.pipe, path, scale=scale, start_step=start, name="q")]
            else:
                hs = apply_to_pair(base.pipe, turbo.pipe, path, scale, start_step=start, name="q")
            try:
                imgs, _ = batched(go, jobs, batch)
            finally:
                for h in hs:
                    h.remove()
            preds = predict(clf, imgs)
            per[scale] = {"radius": float(np.mean([q["radius"] for q in preds])),
                          **{k: float(np.mean([q[k] == parse(p)[k] for q, (p, _) in zip(preds, jobs)]))
                             for k in ("colour", "background")}}
        kept = {k: min(per[s][k] for s in (-2.0, 2.0)) / max(per[0.0][k], 1e-9) for k in ("colour", "background")}
        out[key] = {"radius": {str(s): v["radius"] for s, v in per.items()},
                    "effect": per[2.0]["radius"] - per[-2.0]["radius"], "kept": kept}
    for k in list(out):
        if k != "base":
            out[k]["effect_vs_base"] = out[k]["effect"] / out["base"]["effect"]
    return out


if __name__ == "__main__":
    main()
