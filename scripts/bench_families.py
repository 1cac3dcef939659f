"""Per-family step times on the tiny pipelines (CPU): sampling step, UCE edit, ESD/slider step.

    python scripts/bench_families.py            # prints a JSON table
"""
from __future__ import annotations

import json
import time

import torch

from concept_edit.core.sampling import SampleSettings, generate
from concept_edit.core.tiny import FAMILIES, make_tiny
from concept_edit.methods.esd import EsdConfig, train_esd
from concept_edit.methods.slider import SliderConfig, train_slider
from concept_edit.methods.uce import UceConfig, uce_edit


def timeit(fn, repeats=3):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    torch.set_num_threads(2)
    out = {}
    for fam in FAMILIES:
        pipe = make_tiny(fam)
        s8 = SampleSettings(prompt="a red circle", steps=8, n=1)
        s2 = SampleSettings(prompt="a red circle", steps=2, n=1)
        t8, t2 = timeit(lambda: generate(pipe, s8, progress=False)), timeit(lambda: generate(pipe, s2, progress=False))
        row = {"sampling_step_ms": round(1000 * (t8 - t2) / 6, 2)}
        row["uce_edit_s"] = round(timeit(lambda: uce_edit(pipe, UceConfig(edit=["circle"], preserve=["square"]),
                                                          progress=False), 1), 3)

        def esd(n):
            r = train_esd(pipe, EsdConfig(concepts=["circle"], iterations=n, bank_size=2, ddim_steps=4), progress=False)
            r.edit.remove()

        row["esd_x_step_ms"] = round(1000 * (timeit(lambda: esd(6), 1) - timeit(lambda: esd(1), 1)) / 5, 1)

        def sl(n):
            cfg = SliderConfig.from_dict(dict(prompts=[dict(target="a circle", positive="a large circle",
                                                            unconditional="a small circle")],
                                              iterations=n, bank_size=2, ddim_steps=4))
            r = train_slider(pipe, cfg, progress=False)
            r.edit.remove()

        row["slider_step_ms"] = round(1000 * (timeit(lambda: sl(6), 1) - timeit(lambda: sl(1), 1)) / 5, 1)
        out[fam] = row
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
