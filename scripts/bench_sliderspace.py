"""SliderSpace speed on the toy world: one slider update, ours vs a reference-style loop (JSON).

Ours: every step trains all K sliders in one batched forward (a masked rank-K adapter, rows =
sliders) next to ONE shared no-adapter base pass, then one batched VAE decode and image-encoder
pass, one backward. Reference-style (the SliderSpace reference's loop): three sliders drawn per
step, the shared base pass, then for each drawn slider a separate forward with that slider on,
a separate decode and embedding, and its own backward. Both run here, in one process, on the same
model, samples, noise levels and adapter; a slider update = one slider's loss contributing to one
optimiser step, so per update = step time / sliders in the step.

    python scripts/bench_sliderspace.py                 # ~2 min on one thread
    python scripts/bench_sliderspace.py --steps 10 --discover   # + a full discover run (stage times)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", default="a square")
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--samples", type=int, default=64, help="stored samples to train on (cached)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps of each loop (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "concept-edit-bench-sliderspace"))
    ap.add_argument("--discover", action="store_true", help="also time a full discover (N=--samples)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from concept_edit.core.loading import load
    from concept_edit.core.training import make_optimizer, step_generator
    from concept_edit.methods.sliderspace import SliderSpaceConfig
    from concept_edit.methods.sliderspace.cache import SampleCache, cache_root, model_fingerprint
    from concept_edit.methods.sliderspace.method import _Trainer, resolve_sites
    from concept_edit.methods.sliderspace.pca import pca
    from concept_edit.scorers import get_embedder

    model = load()
    pipe, d = model.pipe, model.defaults
    K = a.components
    cfg = SliderSpaceConfig(prompts=[a.prompt], samples=a.samples, components=K, cache_dir=a.cache)
    cache = SampleCache(cache_root(cfg.cache_dir), model_fingerprint(pipe), cfg.prompts, cfg.seed, d["steps"],
                        d["guidance"], d["size"])
    t = time.perf_counter()
    cache.fill(pipe, a.samples)
    sampling_s = time.perf_counter() - t
    lat, imgs = cache.load(a.samples)
    emb = get_embedder(cfg.embedder)
    e, _ = cache.embeddings(emb, imgs)
    pcs = pca(e)["components"][:K]
    _, paths = resolve_sites(model, cfg.sites)
    tr = _Trainer(model, cfg, paths, pcs, lat, emb, d["steps"], d["guidance"], d["size"], 0)
    opt = make_optimizer("adamw", tr.edit.parameters(), cfg.lr)
    out = {"model": model.source, "components": K, "threads": a.threads, "timed_steps": a.steps,
           "sites": f"{len(paths)} layers", "guidance": d["guidance"]}

    def ours(step):
        loss = tr.loss(step, step_generator(0, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return K

    def reference(step):
        g = step_generator(0, step)
        idx = torch.randint(len(lat), (1,), generator=g).tolist()
        k = int(torch.randint(tr.kmax, (1,), generator=g))
        seeds = torch.randint(2 ** 31 - 1, (1,), generator=g).tolist()
        drawn = sorted(torch.randperm(K, generator=g)[:3].tolist())
        opt.zero_grad(set_to_none=True)
        fb = None
        for j in drawn:  # a separate forward, decode and embedding per slider
            fb_j, fs, _ = tr.features(idx, seeds, k, [j], True, base=fb is None)
            fb = fb if fb is not None else fb_j  # the base pass is shared within the step
            loss = -F.cosine_similarity(fs - fb, pcs[j:j + 1], dim=-1).mean() / len(drawn)
            loss.backward()
        opt.step()
        return len(drawn)

    try:
        for name, fn in (("ours", ours), ("reference_style", reference)):
            fn(10_000)  # warm-up
            n_upd, t = 0, time.perf_counter()
            for s in range(a.steps):
                n_upd += fn(s)
            dt = time.perf_counter() - t
            out[name] = {"step_s": round(dt / a.steps, 3), "sliders_per_step": n_upd // a.steps,
                         "per_slider_update_s": round(dt / n_upd, 4)}
    finally:
        tr.close()
    out["speedup_per_update"] = round(out["reference_style"]["per_slider_update_s"]
                                      / out["ours"]["per_slider_update_s"], 2)
    if a.discover:
        from concept_edit.methods.sliderspace import discover

        fresh = tempfile.mkdtemp(prefix="ss-bench-")
        res = discover(model, cfg.replace(cache_dir=fresh, iterations=50), progress=False)
        out["discover_50_iterations"] = res.info["timings"]
    else:
        out["sampling_s_if_uncached"] = round(sampling_s, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
