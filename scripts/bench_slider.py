"""Slider speed: training step vs a reference-style loop, and inference overhead (JSON, one run).

    python scripts/bench_slider.py [--steps 20] [--images 16]

Reference-style step (the paper's code): x_t by partial denoising with the LoRA active (k guided
steps), four separate frozen forwards with the LoRA at 0 (target, positive, neutral,
unconditional), then the trained forward. Ours: x_t from a frozen-model trajectory bank, the
frozen passes in one batch, then the trained forward.
Inference: 16 images at 25 steps, base vs one and three unfused sliders and one fused slider,
as medians of per-round ratios (every setting once per round, shuffled, divided by that round's
base).
Unfused sliders run two ways: ``peft`` (the adapters compute their low-rank branch in every
forward) and ``merged`` (our generate path, ``LoraRouter.merged()``: the adapters are folded into
the weights at their scheduled scales and re-folded only when a scale changes, here once per
call at a slider start of 0.2; the file stays unfused and the base is restored after the call).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from concept_edit.core.denoise import Denoiser
from concept_edit.core.families import resolve_sites
from concept_edit.core.loading import load_pipeline
from concept_edit.core.lora import inference_merge, lora_router
from concept_edit.core.weights import assign
from concept_edit.methods.slider import SliderConfig, train_slider

PROMPTS = [dict(target="a {}", positive="a large {}", unconditional="a small {}", guidance=4.0)]


def ours(pipe, steps):
    cfg = SliderConfig.from_dict(dict(prompts=PROMPTS, preservation=["circle", "square"], iterations=steps + 1,
                                      bank_size=4, ddim_steps=50, batch_size=1))
    t0 = time.perf_counter()
    r = train_slider(pipe, cfg, progress=False, stop_at=1)
    first = time.perf_counter() - t0
    r.edit.remove()
    t0 = time.perf_counter()
    r = train_slider(pipe, cfg, progress=False)
    total = time.perf_counter() - t0
    r.edit.remove()
    return {"per_step_s": (total - first) / steps, "bank_and_first_step_s": first}


def reference(pipe, steps, ddim=50):
    dn = Denoiser(pipe)
    router = lora_router(pipe)
    router.add("ref", resolve_sites(pipe, "noxattn"), rank=4, alpha=1.0)
    params = router.parameters("ref")
    opt = torch.optim.AdamW(params, lr=2e-4)
    names = ["a circle", "a large circle", "a small circle", ""]
    cond = dn.encode(names)
    pick = lambda i: {k: v[i:i + 1] for k, v in cond.items()}  # noqa: E731
    g = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        k = int(torch.randint(1, ddim, (1,), generator=g))
        router.set_scale("ref", 1.0)
        bank = dn.capture(["a circle"], steps=ddim, guidance=3.0, seed=step, stop_after=k)  # LoRA active
        state = bank.take([0], [bank.n_steps - 1])
        with torch.no_grad(), router.disabled():
            outs = [dn.predict(state, pick(i)) for i in (0, 1, 0, 2)]  # four separate passes
            target = outs[2] + 4.0 * (outs[1] - outs[3])
        pred = dn.predict(state, pick(0))
        loss = F.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step:
            times.append(time.perf_counter() - t0)
    router.remove("ref")
    return {"per_step_s": sum(times) / len(times)}


def gen_time(pipe, n, merged=False):
    import contextlib

    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    t0 = time.perf_counter()
    with inference_merge(pipe) if merged else contextlib.nullcontext():
        pipe(["a red circle"] * n, num_inference_steps=25, guidance_scale=5.0, generator=gens,
             output_type="np")
    return time.perf_counter() - t0


def _sliders(pipe, k):
    """Exactly k sliders on the model (seeded weights, scale 1.5, start 0.2); k = 0 is the base."""
    router = lora_router(pipe)
    for name in list(router.adapters):
        router.remove(name)
    paths = resolve_sites(pipe, "noxattn")
    for i in range(k):
        router.add(f"s{i}", paths, rank=4, alpha=1.0)
        g = torch.Generator().manual_seed(i)
        for p in router.parameters(f"s{i}", "B"):
            p.data.copy_(torch.randn(p.shape, generator=g) * 1e-3)
        router.set_scale(f"s{i}", 1.5)
        router.set_schedule(f"s{i}", start=0.2)
    return router


def inference(pipe, n, repeats=7):
    """Per-round ratios: each round times every setting once, in a shuffled order, and divides by
    that round's base; the medians over rounds are reported. On a shared 2-core machine single
    timings drift by 10-30% within minutes, which swamps a few-% overhead unless it is paired."""
    import random
    import statistics

    settings = {"base": (0, False, False), "one_unfused": (1, False, False),
                "one_unfused_merged": (1, True, False), "three_unfused": (3, False, False),
                "three_unfused_merged": (3, True, False), "one_fused": (1, False, True)}
    _sliders(pipe, 0)
    gen_time(pipe, n)  # warm-up
    times = {k: [] for k in settings}
    order = list(settings)
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for key in order:
            k, merged, fused = settings[key]
            router = _sliders(pipe, k)
            saved = router.fuse("s0") if fused else None
            times[key].append(gen_time(pipe, n, merged))
            if saved is not None:
                assign(pipe.unet, saved)
    _sliders(pipe, 0)
    out = {f"{k}_s_median": round(statistics.median(v), 4) for k, v in times.items()}
    for k in settings:
        if k != "base":
            ratios = [t / b for t, b in zip(times[k], times["base"])]
            out[f"{k}_overhead"] = round(statistics.median(ratios) - 1, 4)
            out[f"{k}_overhead_range"] = [round(min(ratios) - 1, 4), round(max(ratios) - 1, 4)]
    out["rounds"] = repeats
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7, help="rounds of paired inference timings")
    ap.add_argument("--skip-train", action="store_true", help="inference overheads only")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pipe = load_pipeline()
    out = {"model": "toy-world", "threads": a.threads}
    if not a.skip_train:
        o = ours(pipe, a.steps)
        r = reference(pipe, max(4, a.steps // 4))
        out["train"] = {"ours": o, "reference": r, "step_speedup": round(r["per_step_s"] / o["per_step_s"], 2)}
    out["inference"] = inference(pipe, a.images, a.repeats)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
