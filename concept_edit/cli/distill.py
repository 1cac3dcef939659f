"""``concept-edit distill``: the hybrid base -> distilled sampler, x0-hat strips, diversity tables."""
from __future__ import annotations

import argparse
import json
import os

from .common import UsageError, add_command, check_model_arg, parse_apply, positive_int

EXAMPLES = [
    "concept-edit distill sample --distilled weights/toy-turbo --switch 1 --prompt 'a circle' --n 64 "
    "--out out/hybrid",
    "concept-edit distill sample --distilled weights/toy-turbo --switch 0 --allow-pure --prompt 'a circle' "
    "--out out/student",
    "concept-edit distill trajectory --distilled weights/toy-turbo --prompt 'a circle' --n 3 --out strip.png",
    "concept-edit distill diversity out/base out/student out/hybrid --json",
]


def _models(p) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--base", default=None, help="base model (default: the embedded toy world)")
    g.add_argument("--distilled", required=True, help="distilled model: same family, VAE and text encoder")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="weights dtype")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    s = p.add_argument_group("schedule and switch")
    sw = s.add_mutually_exclusive_group()
    sw.add_argument("--switch", type=int, default=None,
                    help="step of the distilled schedule where the distilled model takes over (default 1)")
    sw.add_argument("--switch-timestep", type=float, default=None, help="the base runs while t > T")
    sw.add_argument("--switch-sigma", type=float, default=None, help="the base runs while sigma > S")
    s.add_argument("--mode", default="shared", choices=["shared", "two"],
                   help="shared: one scheduler, the distilled model's (paper setting); two: each model "
                        "its own scheduler, the switch timestep mapped by argmin |t_base - t_distilled|")
    s.add_argument("--timesteps", default=None, help="explicit distilled timesteps, e.g. 999,749,499,249")
    s.add_argument("--steps", type=positive_int("--steps"), default=None,
                   help="distilled steps (default: the distilled model's)")
    s.add_argument("--base-steps", type=positive_int("--base-steps"), default=None,
                   help="the base's own grid in --mode two (default: the base model's steps)")
    s.add_argument("--base-guidance", type=float, default=None, help="CFG of the base phase (default: its model's)")
    s.add_argument("--guidance", type=float, default=None,
                   help="CFG of the distilled phase (default: the distilled model's)")
    s.add_argument("--allow-pure", action="store_true",
                   help="allow a switch at which one model runs no step (pure student or pure base)")


def add_cli(sub) -> None:
    p = add_command(sub, "distill", "hybrid base -> distilled sampling, x0-hat strips, diversity", EXAMPLES,
                    description="Diversity distillation: the base model for the first step(s), the "
                                "distilled model after; x0-hat trajectories; diversity metrics.")
    ds = p.add_subparsers(dest="distill_command", required=True, metavar="SUBCOMMAND")
    s = add_command(ds, "sample", "hybrid samples: base until the switch, distilled after", EXAMPLES[:2])
    _models(s)
    s.add_argument("--prompt", required=True, help="text prompt")
    s.add_argument("--n", type=positive_int("--n"), default=4, help="images (seeds SEED..SEED+N-1)")
    s.add_argument("--seed", type=int, default=0, help="seed of the first image")
    s.add_argument("--batch", type=positive_int("--batch"), default=16, help="images per run")
    s.add_argument("--apply", action="append", default=[], metavar="FILE[@SCALE]",
                   help="a base-trained LoRA slider, applied to both models (sites checked); repeatable")
    st = s.add_mutually_exclusive_group()
    st.add_argument("--slider-start-step", type=int, default=None, help="sliders off before this step")
    st.add_argument("--slider-start-timestep", type=float, default=None, help="sliders off while t > T")
    s.add_argument("--out", required=True, help="output directory (PNGs + manifest.json)")
    s.set_defaults(func=cmd_sample, check=check_sample)
    t = add_command(ds, "trajectory", "decoded x0-hat at every step: base, distilled, hybrid; seeds in rows",
                    EXAMPLES[2:3])
    _models(t)
    t.add_argument("--prompt", required=True, help="text prompt")
    t.add_argument("--n", type=positive_int("--n"), default=2, help="seeds (SEED..SEED+N-1)")
    t.add_argument("--seed", type=int, default=0, help="first seed")
    t.add_argument("--out", required=True, help="output .png strip")
    t.set_defaults(func=cmd_trajectory, check=check_trajectory)
    d = add_command(ds, "diversity", "diversity table across image folders", EXAMPLES[3:])
    d.add_argument("dirs", nargs="+", help="folders of PNG images (one set each)")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument("--no-clip", action="store_true", help="skip the embedding metrics")
    d.add_argument("--no-classifier", action="store_true", help="skip the attribute metrics")
    d.set_defaults(func=cmd_diversity, check=check_diversity)


def _parse_timesteps(text):
    if text is None:
        return None
    try:
        ts = [int(float(x)) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"bad --timesteps {text!r}: write integers like 999,749,499,249") from None
    if not ts or any(a <= b for a, b in zip(ts, ts[1:])):
        raise UsageError(f"bad --timesteps {text!r}: give decreasing integers, e.g. 999,749,499,249")
    return ts


def _check_models(args) -> None:
    for flag in ("base", "distilled"):
        m = getattr(args, flag)
        if m:
            check_model_arg(argparse.Namespace(model=m))
    args.ts = _parse_timesteps(args.timesteps)
    if args.switch is not None and args.switch < 0:
        raise UsageError(f"--switch {args.switch}: give a step index >= 0")


def check_sample(args):
    _check_models(args)
    args.applies = [parse_apply(a) for a in args.apply]
    from .generate import _check_out_dir

    _check_out_dir(args.out)


def check_trajectory(args):
    _check_models(args)
    if not args.out.endswith(".png"):
        raise UsageError(f"--out {args.out!r}: write a .png file name")


def check_diversity(args):
    for d in args.dirs:
        if not os.path.isdir(d):
            raise UsageError(f"{d!r} is not a folder of images")


def _load(args):
    from ..core.loading import load

    base = load(args.base, dtype=args.dtype, device=args.device, quiet=True)
    dist = load(args.distilled, dtype=args.dtype, device=args.device, quiet=True)
    return base, dist


def _kw(args) -> dict:
    return dict(switch=args.switch, switch_timestep=args.switch_timestep, switch_sigma=args.switch_sigma,
                mode=args.mode, steps=args.steps, timesteps=args.ts, base_steps=args.base_steps,
                base_guidance=args.base_guidance, distilled_guidance=args.guidance,
                allow_pure=args.allow_pure)


def cmd_sample(args) -> None:
    import numpy as np
    from tqdm.auto import tqdm

    from .. import __version__
    from ..methods.distill import apply_to_pair, hybrid_sample
    from .generate import write_images

    base, dist = _load(args)
    handles = []
    for i, (path, scale) in enumerate(args.applies):
        handles += apply_to_pair(base.pipe, dist.pipe, path, scale, args.slider_start_step,
                                 args.slider_start_timestep, name=f"apply{i}")
    imgs, secs, res = [], 0.0, None
    seeds = [args.seed + i for i in range(args.n)]
    for a in tqdm(range(0, args.n, args.batch), desc="distill sample", unit="batch"):
        chunk = seeds[a:a + args.batch]
        res = hybrid_sample(base.pipe, dist.pipe, [args.prompt] * len(chunk), seed=chunk, **_kw(args))
        imgs.append((np.clip(res.images, 0, 1) * 255).round().astype(np.uint8))
        secs += res.seconds
    images = np.concatenate(imgs)
    manifest = {"concept_edit": __version__, "base": base.source, "distilled": dist.source,
                "family": base.backbone.name, "prompt": args.prompt, "n": args.n, "seed": args.seed,
                "seeds": seeds, "mode": res.mode, "base_steps": res.base_steps, "models": res.models,
                "timesteps": [float(t) for t in res.timesteps], "switch": args.switch,
                "switch_timestep": args.switch_timestep, "switch_sigma": args.switch_sigma,
                "applied": [{"file": os.path.basename(p), "scale": s} for p, s in args.applies],
                "seconds": round(secs, 3), "seconds_per_image": round(secs / args.n, 4)}
    write_images(args.out, images, manifest)
    print(f"wrote {args.n} images to {args.out}: {res.base_steps} base + "
          f"{len(res.models) - res.base_steps} distilled steps ({secs / args.n:.3f} s/image)")


def cmd_trajectory(args) -> None:
    from PIL import Image

    from ..eval.grid import labelled_grid
    from ..methods.distill.trajectory import strip_tiles, trajectories

    base, dist = _load(args)
    kw = _kw(args)
    if kw["switch_timestep"] is not None or kw["switch_sigma"] is not None:
        raise UsageError("distill trajectory takes --switch STEP (a step of the distilled schedule)")
    tr = trajectories(base.pipe, dist.pipe, args.prompt, seeds=range(args.seed, args.seed + args.n),
                      switch=1 if kw["switch"] is None else kw["switch"], steps=kw["steps"],
                      timesteps=kw["timesteps"], base_steps=kw["base_steps"], mode=kw["mode"],
                      base_guidance=kw["base_guidance"], distilled_guidance=kw["distilled_guidance"],
                      progress=True)
    tiles, cols, rows = strip_tiles(tr)
    h = tr["hybrid"]
    title = (f"{args.prompt!r}: x0-hat per step; hybrid = {h['models'].count('base')} base step(s) then "
             f"distilled; t = {', '.join(str(int(t)) for t in h['timesteps'])}")
    grid = labelled_grid(tiles, cols, rows, tile=96, title=title)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    Image.fromarray(grid).save(args.out)
    print(f"wrote {args.out} ({len(rows)} rows: base, distilled, hybrid x {args.n} seeds)")


def cmd_diversity(args) -> None:
    from tqdm.auto import tqdm

    from ..eval.diversity import diversity_report, load_folder

    reps = {}
    for d in tqdm(args.dirs, desc="diversity", unit="folder", disable=args.json):
        reps[d] = diversity_report(load_folder(d), labels=None if args.no_classifier else "toy",
                                   embed=None if args.no_clip else "toy")
    if args.json:
        print(json.dumps(reps, indent=1))
        return
    attrs = sorted({a for r in reps.values() for a in r.get("entropy", {})})
    head = ["folder", "n"] + [f"H({a})" for a in attrs] + ["pos", "pairwise", "vendi"]
    rows = [[d, str(r["n"])] + [f"{r['entropy'][a]:.2f}" for a in attrs if "entropy" in r]
            + [f"{r['position_spread']:.3f}", f"{r.get('pairwise_distance', float('nan')):.3f}",
               f"{r.get('vendi', float('nan')):.2f}"] for d, r in reps.items()]
    w = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]
    for x in [head] + rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(x)))
    r0 = next(iter(reps.values()))
    print(f"entropy in bits (toy classifier); encoder: {r0.get('encoder', 'none')}; "
          f"versions: {', '.join(f'{k} {v}' for k, v in r0['versions'].items())}")
