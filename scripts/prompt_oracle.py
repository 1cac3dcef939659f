"""The prompt itself as a ceiling for sliders (concept_edit.eval.prompt_oracle), as JSON.

    python scripts/prompt_oracle.py purity --model weights/toy-turbo --steps 0 1 2 --seeds 32
    python scripts/prompt_oracle.py purity --model weights/toy-world --steps 0 3 5 8 --seeds 32
    python scripts/prompt_oracle.py size --model weights/toy-mmdit --step 8 --seeds 64 --seed0 90000

``purity``: "a square" (``--prompt``) switched at step k to a version naming a colour, size or
background; per switch, the changes per family on the same seeds and the named family's share
(SliderSpace's purity, issue 15's bar 0.7). ``size``: the size slider's protocol with each slider
prompt's "small" / "large" version standing for scales -2 / +2 from step k (issue 19).
"""
from __future__ import annotations

import argparse
import json
import os

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["purity", "size"])
    ap.add_argument("--model", default=None, help="a toy-world pipeline (default: weights/toy-world)")
    ap.add_argument("--prompt", default="a square", help="purity: the bare prompt")
    ap.add_argument("--steps", type=int, nargs="+", default=[0], help="purity: switch steps")
    ap.add_argument("--step", type=int, default=0, help="size: switch step (8 of 25 = the MMDiT slider's start)")
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--seed0", type=int, default=None, help="first seed (default: the report's)")
    ap.add_argument("--prompts", type=int, default=8, help="size: every k-th of the 8 slider prompts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    if a.prompts not in (1, 2, 4, 8):
        ap.error(f"--prompts {a.prompts}: choose 1, 2, 4 or 8 (every k-th of the 8 slider prompts)")
    if a.seeds < 1:
        ap.error(f"--seeds {a.seeds}: give at least 1")
    torch.set_num_threads(a.threads)

    from concept_edit.core.loading import load_pipeline
    from concept_edit.eval.prompt_oracle import purity_oracle, size_oracle
    from concept_edit.eval.toy import SLIDER_PROMPTS

    pipe = load_pipeline(a.model)
    seed0 = {} if a.seed0 is None else {"seed0": a.seed0}
    try:
        if a.what == "purity":
            rep = {"model": a.model, "prompt": a.prompt,
                   "rows": purity_oracle(pipe, a.prompt, steps=a.steps, seeds=a.seeds, **seed0)}
        else:
            rep = size_oracle(pipe, step=a.step, seeds=a.seeds, prompts=SLIDER_PROMPTS[::8 // a.prompts], **seed0)
    except ValueError as e:   # a prompt outside the toy grammar, a step outside the schedule
        raise SystemExit(f"prompt_oracle: {e}") from None
    if a.what == "size":
        rep = {k: v for k, v in rep.items() if k != "mean"} | {"mean_radius": rep["mean"], "model": a.model}
    text = json.dumps(rep, indent=1, default=str)
    print(text)
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
