"""UCE speed: text encoding and solve, ours vs a reference-style loop, in one run (JSON).

    python scripts/bench_uce.py [--counts 1,10,100] [--threads 2]

Model: SD1.5-shaped UNet and CLIP-L-shaped text encoder (real dimensions, random weights).
For n concepts (erase toward '') with a preserve set of n other concepts:
- ours: the batched capture of the edited layers' inputs (what `uce` runs) and the factored
  solve applied to all 32 to_k/to_v matrices;
- reference style: one text-encoder forward per prompt; per layer a Python loop of outer
  products over the concepts and an explicit inverse;
- baseline for text: one batched forward of the encoder over the same prompts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _shapes import concepts, sd15_pipeline  # noqa: E402

from concept_edit.core.denoise import Denoiser  # noqa: E402
from concept_edit.core.families import resolve_sites  # noqa: E402
from concept_edit.core.weights import snapshot  # noqa: E402
from concept_edit.methods.uce import UceConfig  # noqa: E402
from concept_edit.methods.uce.method import InputCapture, build_rows, solve  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def reference(pipe, cfg, paths):
    """Reference style: per-prompt encoding, per-layer loops, explicit inverse (last+eos rows)."""
    from concept_edit.core.tokens import token_positions

    tok, te = pipe.tokenizer, pipe.text_encoder

    def enc(p):
        ids = tok([p], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return te(ids)[0][0]

    with torch.no_grad():
        t0 = time.perf_counter()
        E = {p: enc(p) for p in cfg.edit + [""] + cfg.preserve}
        t_text = time.perf_counter() - t0
        t0 = time.perf_counter()
        edits, keeps = [], []
        for c in cfg.edit:
            pc, pg = token_positions(pipe, c, 77), token_positions(pipe, "", 77)
            lc, lg = pc.last[0], pg.last[0]
            src = [lc + k for k in range(77 - lc)]
            dst = [min(lg + k, 76) for k in range(77 - lc)]
            edits.append((E[c][src], E[""][dst]))
        for q in cfg.preserve + [""]:
            pq = token_positions(pipe, q, 77)
            keeps.append(E[q][pq.last + pq.trailing])
        W = snapshot(pipe.unet, [p + ".weight" for p in paths])
        for k in W:  # the reference: per layer, a loop over concepts, then an explicit inverse
            w = W[k]
            mat1 = cfg.lamb * w.clone()
            mat2 = cfg.lamb * torch.eye(w.shape[1])
            for c_rows, g_rows in edits:
                mat1 += (w @ g_rows.T) @ c_rows
                mat2 += c_rows.T @ c_rows
            for q_rows in keeps:
                mat1 += (w @ q_rows.T) @ q_rows
                mat2 += q_rows.T @ q_rows
            mat1 @ torch.inverse(mat2)
        t_solve = time.perf_counter() - t0
    return t_text, t_solve


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="1,10,100")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-reference-above", type=int, default=100)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    pipe = sd15_pipeline()
    paths = resolve_sites(pipe, "text_kv")
    dn = Denoiser(pipe)
    original = snapshot(dn.module, [p + ".weight" for p in paths])
    results = {"model": "SD1.5-shaped UNet + CLIP-L-shaped text encoder (random)", "layers": len(paths),
               "threads": a.threads, "token_policy": "last+eos", "runs": {}}
    for n in [int(x) for x in a.counts.split(",")]:
        cfg = UceConfig(edit=concepts(n), preserve=concepts(n, offset=n), token_policy="last+eos")
        prompts = list(dict.fromkeys(cfg.edit + [""] + cfg.preserve))
        cap = InputCapture(pipe, paths, static=True, context_steps=1, seed=0)
        with torch.no_grad():
            _, t_batched = timed(lambda: pipe.text_encoder(pipe.tokenizer(
                prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids))
        cache = {}
        orig_call = InputCapture.__call__

        def counting(self, ps, batch=64):
            out, dt = timed(lambda: orig_call(self, ps, batch))
            cache["text"] = cache.get("text", 0.0) + dt
            return out

        InputCapture.__call__ = counting
        try:
            rows, t_rows = timed(lambda: build_rows(cfg, cap, pipe))
        finally:
            InputCapture.__call__ = orig_call
        t_text = cache["text"]
        _, t_solve = timed(lambda: solve(cfg, pipe, cap, rows, original))
        t_solve += t_rows - t_text  # row assembly belongs to the solve
        run = {"concepts": n, "preserve": n, "prompts": len(prompts),
               "edit_rows": int(rows["*"][0].shape[0]), "ours_text_s": round(t_text, 3),
               "batched_encoder_s": round(t_batched, 3), "text_vs_batched": round(t_text / t_batched, 3),
               "ours_solve_s": round(t_solve, 3)}
        if n <= a.skip_reference_above:
            rt, rs = reference(pipe, cfg, paths)
            run.update(ref_text_s=round(rt, 3), ref_solve_s=round(rs, 3),
                       text_speedup_vs_ref=round(rt / t_text, 2), solve_speedup_vs_ref=round(rs / t_solve, 2))
        results["runs"][str(n)] = run
        print(json.dumps(run), file=sys.stderr)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
