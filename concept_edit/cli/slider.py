"""``concept-edit slider train|export|grid``."""
from __future__ import annotations

import json
import os

from .common import (UsageError, add_command, add_config_args, add_model_args, check_model_arg,
                     config_from_args, load_model, out_file, parse_apply, parse_floats, positive_int)


def add_cli(sub) -> None:
    from ..methods.slider.config import SliderConfig

    p = add_command(sub, "slider", "Concept Sliders: train, export (kohya), grid")
    ss = p.add_subparsers(dest="slider_command", required=True, metavar="ACTION")

    t = add_command(ss, "train", "train a slider from a YAML config", [
        "concept-edit slider train configs/sliders/toy-size.yaml --out out/size.safetensors   # ~2 min",
        "concept-edit slider train configs/sliders/toy-size.yaml --iterations 50 --set lr=3e-4 --out out/s.safetensors",
        "concept-edit slider train configs/sliders/toy-size.yaml --out out/size.safetensors --resume"])
    add_model_args(t)
    t.add_argument("config_file", metavar="CONFIG", help="YAML config (see configs/sliders/)")
    add_config_args(t, SliderConfig)
    r = t.add_argument_group("run")
    r.add_argument("--out", required=True, help="output .safetensors (diffusers LoRA format)")
    r.add_argument("--checkpoint-dir", help="checkpoint directory (default: OUT.ckpt/, removed on success)")
    r.add_argument("--resume", action="store_true", help="continue from the checkpoint directory")
    t.set_defaults(func=cmd_train, check=check_train)

    e = add_command(ss, "export", "convert a slider to kohya keys for ComfyUI/A1111", [
        "concept-edit slider export --kohya out/size.safetensors out/size-kohya.safetensors"])
    e.add_argument("--kohya", action="store_true", required=True, help="kohya key format")
    e.add_argument("input", help="a slider .safetensors written by concept-edit")
    e.add_argument("output", help="the kohya .safetensors to write")
    e.set_defaults(func=cmd_export, check=check_export)

    g = add_command(ss, "grid", "seeds in rows, slider scales in columns -> one labelled PNG", [
        "concept-edit slider grid --apply out/size.safetensors --scales -2,-1,0,1,2 "
        "--prompt 'a red circle' --out out/grid.png   # ~30 s",
        "concept-edit slider grid --apply out/size.safetensors --apply out/uce.safetensors "
        "--prompt 'a square' --out out/grid2.png   # sweep the first, keep the second on"])
    add_model_args(g)
    g.add_argument("--apply", required=True, action="append", metavar="FILE[@SCALE]",
                   help="slider file (the first is swept; others stay at @SCALE)")
    g.add_argument("--scales", default="-2,-1,0,1,2", help="scales of the first slider (columns)")
    g.add_argument("--prompt", required=True, help="prompt of every image")
    g.add_argument("--n", type=positive_int("--n"), default=4, help="seeds (rows)")
    g.add_argument("--seed", type=int, default=0, help="first seed")
    g.add_argument("--steps", type=positive_int("--steps"), help="sampling steps (default: the model's)")
    g.add_argument("--guidance", type=float, help="CFG scale (default: the model's)")
    g.add_argument("--slider-start", type=float, help="fraction of steps before sliders switch on "
                                                      "(default: the file's)")
    g.add_argument("--tile", type=positive_int("--tile"), default=128, help="tile size in the PNG (px)")
    g.add_argument("--force", action="store_true", help="apply files made for another base")
    g.add_argument("--out", required=True, help="grid .png")
    g.set_defaults(func=cmd_grid, check=check_grid)


def check_train(args):
    from ..methods.slider.config import SliderConfig

    out_file(args.out, ".safetensors")
    check_model_arg(args)
    args.config = args.config or args.config_file
    if args.config != args.config_file:
        raise UsageError("give the YAML config once (positional CONFIG), not also --config")
    cfg = config_from_args(args, SliderConfig)
    args.ckdir = args.checkpoint_dir or args.out + ".ckpt"
    if args.resume and not os.path.exists(os.path.join(args.ckdir, "optim.pt")):
        raise UsageError(f"--resume: no checkpoint in {args.ckdir}; run without --resume first")
    return cfg


def cmd_train(args) -> None:
    from ..core.trainloop import launch_device
    from ..methods.slider.train import train_slider

    cfg = args.cfg
    args.device = launch_device(args.device)  # under a multi-GPU launch: this rank's own GPU
    model = load_model(args)
    res = train_slider(model.pipe, cfg, checkpoint_dir=args.ckdir, resume=args.resume)
    if not res.is_main:  # the other processes of a launch: rank 0 writes and reports
        return
    res.save(args.out)
    loss = f", final loss {res.losses[-1]:.5f}" if res.losses else ""
    print(f"slider {cfg.name}: {res.loop.report()} in {res.seconds:.0f} s{loss} -> {args.out}")


def check_export(args):
    parse_apply(args.input)
    out_file(args.output, ".safetensors", "output")


def cmd_export(args) -> None:
    from ..core.io import atomic_save_file, load_safetensors, read_artifact_meta, read_metadata
    from ..methods.slider.kohya import to_kohya

    meta = read_artifact_meta(args.input)
    if meta.get("kind") != "lora":
        raise UsageError(f"{args.input} is a {meta.get('kind')} edit ({meta.get('method')}), not a LoRA; "
                         "only sliders and LoRA ESD files have kohya keys")
    sd = load_safetensors(args.input)
    kmeta = {"ss_network_module": "networks.lora", "concept_edit": read_metadata(args.input).get("concept_edit", "{}")}
    atomic_save_file(to_kohya(sd), args.output, metadata=kmeta)
    print(f"wrote kohya LoRA ({len(sd) // 2} modules) to {args.output}")


def check_grid(args):
    from ..core.io import read_artifact_meta

    args.scale_list = parse_floats(args.scales, "--scales")
    out_file(args.out, ".png")
    check_model_arg(args)
    if args.slider_start is not None and not 0 <= args.slider_start <= 1:
        raise UsageError(f"--slider-start must be a fraction in [0, 1], got {args.slider_start}")
    args.applies = [parse_apply(a) for a in args.apply]
    meta = read_artifact_meta(args.applies[0][0])
    if meta.get("kind") != "lora":
        raise UsageError(f"{args.applies[0][0]} is a {meta.get('method')} weights edit, not a slider: "
                         "put a slider first (it is swept) and other edits after it")


def cmd_grid(args) -> None:
    from PIL import Image
    from tqdm.auto import tqdm

    from ..core.artifacts import apply_artifact
    from ..core.io import atomic_path
    from ..core.sampling import SampleSettings, generate
    from ..eval.grid import labelled_grid

    model = load_model(args)
    pipe = model.pipe
    handles = [apply_artifact(pipe, path, scale=scale, start=args.slider_start, force=args.force,
                              name=f"grid{i}") for i, (path, scale) in enumerate(args.applies)]
    cols = []
    for s in tqdm(args.scale_list, desc="grid (scales)", unit="scale"):
        model.router.set_scale(handles[0].name, s)
        cols.append(generate(pipe, SampleSettings(prompt=args.prompt, n=args.n, seed=args.seed,
                                                  steps=args.steps, guidance=args.guidance), progress=False))
    tiles = [[c[i] for c in cols] for i in range(args.n)]
    name = os.path.basename(args.applies[0][0])
    grid = labelled_grid(tiles, cols=[f"{name} @ {s:g}" if i == 0 else f"{s:g}" for i, s in enumerate(args.scale_list)],
                         rows=[f"seed {args.seed + i}" for i in range(args.n)], tile=args.tile,
                         title=f"{args.prompt!r}: columns = slider scale, rows = seeds")
    with atomic_path(args.out, ".png") as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    print(json.dumps({"grid": args.out, "rows": "seeds", "columns": args.scale_list}))
