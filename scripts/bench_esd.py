"""ESD speed and memory: ours vs a reference-style loop, measured in one run (JSON ratios).

    python scripts/bench_esd.py [--toy-steps 20] [--sd15-steps 2] [--sd15-ddim 50]

Reference style (as in the papers' code): a second full copy of the network for the frozen
model, x_t regenerated every iteration by k guided DDIM steps of the model being trained,
three separate frozen forwards (anchor, concept, ''), direct fine-tuning of ESD-x parameters.
Ours: LoRA on the same layers, frozen passes = the same network with the LoRA disabled, in one
batch; x_t from a bank of frozen-model trajectories made once.
Both run STEPS + 1 iterations in one run each; step times come from the training loop's progress
timestamps (ours) or the loop's own clock (reference), the first step left out as warm-up:
``per_step_s`` (-> ``step_speedup``), and ``end_to_end_s`` = set-up (our bank, the reference's
frozen copy) + all STEPS + 1 iterations (-> ``end_to_end_speedup``, same number of steps).
Each variant runs in its own process so that peak RSS (ru_maxrss) is its own. On the SD1.5-shaped
net ours also runs with ``gradient_checkpointing: true`` (the memory setting for SD-sized models).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def load(model: str):
    if model == "sd15":
        from _shapes import sd15_pipeline

        return sd15_pipeline()
    from concept_edit.core.loading import load_pipeline

    return load_pipeline()


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_ours(pipe, steps: int, ddim: int, train: str, gc: bool = False):
    from concept_edit.methods.esd import EsdConfig, train_esd

    cfg = EsdConfig(concepts=["circle"], variant="x", iterations=steps + 1, bank_size=4,
                    ddim_steps=ddim, train=train, lr=1e-4, gradient_checkpointing=gc)
    stamps = {}                                             # step -> perf_counter (0: loop start)
    t0 = time.perf_counter()
    train_esd(pipe, cfg, progress=lambda step, total, logs, t: stamps.setdefault(step, t))
    per_step = (stamps[steps + 1] - stamps[1]) / steps     # steps 2 .. STEPS+1 (1 = warm-up)
    return {"per_step_s": per_step, "setup_and_bank_s": stamps[0] - t0,
            "bank_and_first_step_s": stamps[1] - t0, "end_to_end_s": stamps[steps + 1] - t0,
            "iterations": steps + 1}


def worker_ref(pipe, steps: int, ddim: int, k_fixed: int | None):
    from concept_edit.core.families import resolve_sites
    from concept_edit.core.sampling import pipe_defaults

    t_start = time.perf_counter()
    unet, sched = pipe.unet, pipe.scheduler
    frozen = copy.deepcopy(unet)                             # the second full network
    params = [p for n in resolve_sites(pipe, "xattn") for p in unet.get_submodule(n).parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-5)
    tok = lambda s: pipe.tokenizer(s, padding="max_length", max_length=77, return_tensors="pt").input_ids  # noqa
    with torch.no_grad():
        e_c, e_0 = pipe.text_encoder(tok(["circle"]))[0], pipe.text_encoder(tok([""]))[0]
    size = pipe_defaults(pipe)["size"] // pipe.vae_scale_factor
    sched.set_timesteps(ddim)
    g = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        k = k_fixed if k_fixed is not None else int(torch.randint(ddim, (1,), generator=g))
        x = torch.randn(1, 4, size, size, generator=g)
        with torch.no_grad():                                 # k guided steps with the trained model
            for t in sched.timesteps[:k]:
                out = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([e_0, e_c])).sample
                u, c = out.chunk(2)
                x = sched.step(u + 3.0 * (c - u), t, x).prev_sample
            t = sched.timesteps[k]
            e_a = frozen(x, t, encoder_hidden_states=e_0).sample      # three separate frozen passes
            e_p = frozen(x, t, encoder_hidden_states=e_c).sample
            e_n = frozen(x, t, encoder_hidden_states=e_0).sample
            target = e_a - 1.0 * (e_p - e_n)
        pred = unet(x, t, encoder_hidden_states=e_c).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step:
            times.append(time.perf_counter() - t0)
    return {"per_step_s": sum(times) / len(times), "end_to_end_s": time.perf_counter() - t_start,
            "iterations": steps + 1, "k": k_fixed if k_fixed is not None else "uniform"}


def run_worker(args):
    torch.set_num_threads(args.threads)
    pipe = load(args.model)
    base = rss_mb()
    if args.worker == "ours":
        out = worker_ours(pipe, args.steps, args.ddim, args.train, bool(args.gc))
    else:
        out = worker_ref(pipe, args.steps, args.ddim, args.k)
    out.update(model_rss_mb=round(base, 1), peak_rss_mb=round(rss_mb(), 1))
    print(json.dumps(out))


def spawn(**kw) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kw.pop("worker")]
    for k, v in kw.items():
        if v is not None:
            cmd += [f"--{k}", str(v)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["ours", "ref"])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--ddim", type=int, default=50)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--train", default="lora")
    ap.add_argument("--gc", type=int, default=0, help="worker: gradient checkpointing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--toy-steps", type=int, default=20)
    ap.add_argument("--sd15-steps", type=int, default=2)
    ap.add_argument("--sd15-ddim", type=int, default=50,
                    help="trajectory length on the SD1.5-shaped net (memory does not depend on it)")
    a = ap.parse_args()
    if a.worker:
        return run_worker(a)
    out = {"threads": a.threads}
    toy_o = spawn(worker="ours", model="toy", steps=a.toy_steps, ddim=50, threads=a.threads)
    toy_r = spawn(worker="ref", model="toy", steps=a.toy_steps, ddim=50, threads=a.threads)
    out["toy"] = {"ours": toy_o, "reference": toy_r,
                  "step_speedup": round(toy_r["per_step_s"] / toy_o["per_step_s"], 2),
                  "end_to_end_speedup": round(toy_r["end_to_end_s"] / toy_o["end_to_end_s"], 2),
                  "peak_ratio": round(toy_o["peak_rss_mb"] / toy_r["peak_rss_mb"], 3)}
    print(json.dumps(out["toy"]), file=sys.stderr)
    d = a.sd15_ddim
    sd_o = spawn(worker="ours", model="sd15", steps=a.sd15_steps, ddim=d, threads=a.threads)
    sd_og = spawn(worker="ours", model="sd15", steps=a.sd15_steps, ddim=d, threads=a.threads, gc=1)
    sd_od = spawn(worker="ours", model="sd15", steps=a.sd15_steps, ddim=d, threads=a.threads, train="direct")
    sd_r = spawn(worker="ref", model="sd15", steps=a.sd15_steps, ddim=d, k=d // 2, threads=a.threads)
    out["sd15_shaped_256px"] = {
        "ours_lora": sd_o, "ours_lora_gradient_checkpointing": sd_og, "ours_direct": sd_od,
        "reference": sd_r,
        "step_speedup": round(sd_r["per_step_s"] / sd_o["per_step_s"], 2),
        "end_to_end_speedup": round(sd_r["end_to_end_s"] / sd_o["end_to_end_s"], 2),
        "peak_ratio_lora": round(sd_o["peak_rss_mb"] / sd_r["peak_rss_mb"], 3),
        "peak_ratio_lora_gradient_checkpointing": round(sd_og["peak_rss_mb"] / sd_r["peak_rss_mb"], 3),
        "step_speedup_gradient_checkpointing": round(sd_r["per_step_s"] / sd_og["per_step_s"], 2),
        "peak_ratio_direct": round(sd_od["peak_rss_mb"] / sd_r["peak_rss_mb"], 3),
        "ddim": d,
        "note": f"reference k fixed at {d // 2} (the mean of uniform k over {d} steps) to bound its time"}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
