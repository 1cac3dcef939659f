"""`make demo`: the main job on the embedded toy world, offline on CPU, in about a minute.

1. generates a grid for a few prompts and scores every image with the toy classifier;
2. erases "circle" with UCE (configs/uce/erase-circle.yaml; closed form, seconds) and shows
   "a circle" before/after.
Images land in --out (grid.png, erase-circle.png, and the raw PNGs); a summary is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from PIL import Image

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "uce",
                      "erase-circle.yaml")  # the shipped erase-circle settings
PROMPTS = ["a large red circle on a plain background", "a small blue square on a striped background",
           "a yellow star on a dotted background", "a green triangle"]


def grid(rows: list[np.ndarray]) -> Image.Image:
    return Image.fromarray(np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--model", default=None)
    a = ap.parse_args(argv)

    from concept_edit import SampleSettings, generate, load
    from concept_edit.core.io import atomic_dir
    from concept_edit.methods.uce import UceConfig, uce_edit
    from concept_edit.toyworld.captions import parse
    from concept_edit.toyworld.classifier import load_classifier, match_rates, predict

    t0 = time.time()
    model = load(a.model)
    pipe = model.pipe
    clf = load_classifier()
    summary = {"model": model.source, "prompts": {}}
    rows = []
    for p in PROMPTS:
        imgs = generate(pipe, SampleSettings(prompt=p, n=a.seeds, seed=0), progress=False)
        rows.append(imgs)
        summary["prompts"][p] = {k: round(v, 3) for k, v in match_rates(predict(clf, imgs), parse(p)).items()}
    res = uce_edit(pipe, UceConfig.from_yaml(CONFIG), progress=False)
    before = generate(pipe, SampleSettings(prompt="a circle", n=a.seeds, seed=100), progress=False)
    with res.applied():
        after = generate(pipe, SampleSettings(prompt="a circle", n=a.seeds, seed=100), progress=False)
        kept = generate(pipe, SampleSettings(prompt="a square", n=a.seeds, seed=100), progress=False)
    rate = lambda imgs, shape: float(np.mean([q["shape"] == shape for q in predict(clf, imgs)]))  # noqa
    summary["uce_erase_circle"] = {"'a circle' shows a circle": {"before": rate(before, "circle"),
                                                                 "after": rate(after, "circle")},
                                   "'a square' shows a square (after)": rate(kept, "square")}
    with atomic_dir(a.out) as tmp:
        grid(rows).resize((64 * a.seeds * 2, 64 * len(PROMPTS) * 2), Image.NEAREST).save(
            os.path.join(tmp, "grid.png"))
        grid([before, after, kept]).resize((64 * a.seeds * 2, 64 * 3 * 2), Image.NEAREST).save(
            os.path.join(tmp, "erase-circle.png"))
        res.save(os.path.join(tmp, "uce-erase-circle.safetensors"))
        for i, r in enumerate(rows):
            for j, im in enumerate(r):
                Image.fromarray(im).save(os.path.join(tmp, f"p{i}_{j:02d}.png"))
        with open(os.path.join(tmp, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    summary["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(summary, indent=1))
    print(f"images: {a.out}/grid.png (rows = prompts, columns = seeds), {a.out}/erase-circle.png "
          "(rows: 'a circle' before, after UCE erase; 'a square' after)")


if __name__ == "__main__":
    main()
