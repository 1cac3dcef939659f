"""``concept-edit slider train|export|grid``."""
from __future__ import annotations

import json
import os


def add_cli(sub) -> None:
    from ...cli.common import add_model_args, positive_int

    p = sub.add_parser("slider", help="Concept Sliders: train, export (kohya), grid")
    ss = p.add_subparsers(dest="slider_command", required=True, metavar="ACTION")

    t = ss.add_parser("train", help="train a slider from a YAML config")
    add_model_args(t)
    t.add_argument("config", help="YAML config (see configs/sliders/)")
    t.add_argument("--out", required=True, help="output .safetensors (diffusers LoRA format)")
    t.add_argument("--iterations", type=positive_int("--iterations"))
    t.add_argument("--seed", type=int)
    t.add_argument("--checkpoint-dir")
    t.add_argument("--resume", action="store_true")
    t.set_defaults(func=cmd_train)

    e = ss.add_parser("export", help="convert a slider to kohya keys for ComfyUI/A1111")
    e.add_argument("--kohya", action="store_true", required=True, help="kohya key format")
    e.add_argument("input")
    e.add_argument("output")
    e.set_defaults(func=cmd_export)

    g = ss.add_parser("grid", help="seeds in rows, slider scales in columns -> one PNG")
    add_model_args(g)
    g.add_argument("--apply", required=True, action="append", metavar="FILE",
                   help="slider file (the first is swept; others stay at @SCALE)")
    g.add_argument("--scales", default="-2,-1,0,1,2")
    g.add_argument("--prompt", required=True)
    g.add_argument("--n", type=positive_int("--n"), default=4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=positive_int("--steps"))
    g.add_argument("--guidance", type=float)
    g.add_argument("--slider-start", type=float)
    g.add_argument("--force", action="store_true")
    g.add_argument("--out", required=True, help="grid .png")
    g.set_defaults(func=cmd_grid)


def cmd_train(args) -> None:
    from ...cli.common import UsageError, load_model
    from .config import SliderConfig
    from .train import train_slider

    if not args.out.endswith(".safetensors"):
        raise UsageError(f"--out {args.out!r}: write a .safetensors file name")
    over = {k: getattr(args, k) for k in ("iterations", "seed") if getattr(args, k) is not None}
    cfg = SliderConfig.from_yaml(args.config, **over)
    ckdir = args.checkpoint_dir or args.out + ".ckpt"
    if args.resume and not os.path.exists(os.path.join(ckdir, "optim.pt")):
        raise UsageError(f"--resume: no checkpoint in {ckdir}; run without --resume first")
    pipe = load_model(args)
    res = train_slider(pipe, cfg, checkpoint_dir=ckdir, resume=args.resume)
    res.save(args.out)
    print(f"slider {cfg.name}: {len(res.losses)} steps in {res.seconds:.0f} s, final loss "
          f"{res.losses[-1]:.5f} -> {args.out}")


def cmd_export(args) -> None:
    from ...core.io import atomic_save_file, load_safetensors, read_metadata
    from .kohya import to_kohya

    sd = load_safetensors(args.input)
    meta = read_metadata(args.input)
    kmeta = {"ss_network_module": "networks.lora", "concept_edit": meta.get("concept_edit", "{}")}
    atomic_save_file(to_kohya(sd), args.output, metadata=kmeta)
    print(f"wrote kohya LoRA ({len(sd) // 2} modules) to {args.output}")


def cmd_grid(args) -> None:
    import numpy as np
    from PIL import Image

    from ...cli.common import UsageError, load_model, parse_apply
    from ...core.artifacts import apply_artifact
    from ...core.io import atomic_path
    from ...core.lora import lora_router
    from ...core.sampling import SampleSettings, generate

    try:
        scales = [float(s) for s in args.scales.split(",")]
    except ValueError:
        raise UsageError(f"bad --scales {args.scales!r}: write numbers like -2,-1,0,1,2") from None
    if not args.out.endswith(".png"):
        raise UsageError(f"--out {args.out!r}: write a .png file name")
    pipe = load_model(args)
    handles = []
    for i, a in enumerate(args.apply):
        path, scale = parse_apply(a)
        handles.append(apply_artifact(pipe, path, scale=scale, start=args.slider_start, force=args.force,
                                      name=f"grid{i}"))
    router = lora_router(pipe)
    cols = []
    for s in scales:
        router.set_scale(handles[0].name, s)
        cols.append(generate(pipe, SampleSettings(prompt=args.prompt, n=args.n, seed=args.seed,
                                                  steps=args.steps, guidance=args.guidance), progress=False))
    rows = [np.concatenate([c[i] for c in cols], axis=1) for i in range(args.n)]
    grid = np.concatenate(rows, axis=0)
    with atomic_path(args.out, ".png") as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    print(json.dumps({"grid": args.out, "rows": "seeds", "columns": scales}))
