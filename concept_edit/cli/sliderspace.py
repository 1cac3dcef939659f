"""``concept-edit sliderspace discover|grid``: unsupervised slider discovery."""
from __future__ import annotations

import json
import os

from .common import (UsageError, add_command, add_config_args, add_model_args, check_model_arg,
                     config_with_recommended, load_model, out_file, parse_floats, positive_int,
                     say_recommended)


def add_cli(sub) -> None:
    from ..methods.sliderspace.config import SliderSpaceConfig

    p = add_command(sub, "sliderspace", "SliderSpace: discover K sliders from prompts (PCA of CLIP "
                                        "embeddings -> rank-1 LoRAs), browse them")
    ss = p.add_subparsers(dest="sliderspace_command", required=True, metavar="ACTION")

    d = add_command(ss, "discover", "sample N images, embed, PCA, train K rank-1 sliders -> OUT/", [
        "concept-edit sliderspace discover --prompt 'a square' --out out/ss-square   # ~7 min: 512 "
        "samples, 8 sliders",
        "concept-edit sliderspace discover --prompt 'a square' --components 4 --iterations 100 "
        "--out out/ss4   # reuses the cached samples",
        "concept-edit sliderspace discover --prompt 'a photo of a dog' --model stabilityai/sdxl-turbo "
        "--embedder ViT-B-32@/models/vit-b-32.safetensors --device cuda --out out/dog"],
        description="SliderSpace: sample N images for the prompts, embed them with an open_clip image "
                    "encoder, take the principal components, and train one rank-1 LoRA slider per "
                    "component so that the slider moves the image embedding along it. Writes "
                    "OUT/slider_XX.safetensors (diffusers LoRA; `generate --apply OUT/slider_03.safetensors@2`), "
                    "OUT/manifest.json, OUT/pca.safetensors and OUT/sheet.png. Samples and embeddings "
                    "are cached: a second run with other K or iterations samples nothing.")
    add_model_args(d)
    d.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                   help="a prompt to sample (repeat for several; images alternate between them)")
    add_config_args(d, SliderSpaceConfig, skip=("prompts",))
    r = d.add_argument_group("run")
    r.add_argument("--out", required=True, help="output directory (written whole at the end, or not at all)")
    r.add_argument("--checkpoint-dir", help="training checkpoints (default: OUT.ckpt/, removed on success)")
    r.add_argument("--resume", action="store_true", help="continue training from the checkpoint directory")
    r.add_argument("--sheet-scales", default="-2,-1,0,1,2", help="columns of OUT/sheet.png")
    r.add_argument("--sheet-seeds", type=int, default=2, help="seeds per scale in OUT/sheet.png (0: no sheet)")
    r.add_argument("--report-seeds", type=int, default=16,
                   help="toy world only: seeds per scale (+-2) for the attribute each slider moves, "
                        "recorded in the manifest (0: skip)")
    d.set_defaults(func=cmd_discover, check=check_discover)

    g = add_command(ss, "grid", "rows = sliders, columns = scales x seeds -> one labelled PNG", [
        "concept-edit sliderspace grid out/ss-square --scales -2,-1,0,1,2 --out out/sheet.png   # ~1 min",
        "concept-edit sliderspace grid out/ss-square --sliders 0,3 --seeds 4 --prompt 'a square' --out s.png"])
    add_model_args(g)
    g.add_argument("dir", metavar="DIR", help="output directory of `sliderspace discover`")
    g.add_argument("--scales", default="-2,-1,0,1,2", help="slider scales (columns)")
    g.add_argument("--seeds", type=positive_int("--seeds"), default=2, help="seeds per scale")
    g.add_argument("--seed", type=int, default=50_000, help="first seed")
    g.add_argument("--prompt", help="prompt (default: the manifest's first)")
    g.add_argument("--sliders", help="slider indices, e.g. 0,3 (default: all)")
    g.add_argument("--tile", type=positive_int("--tile"), default=64, help="tile size in the PNG (px)")
    g.add_argument("--out", required=True, help="grid .png")
    g.set_defaults(func=cmd_grid, check=check_grid)

    r = add_command(ss, "report", "toy world: what each slider moves (toy classifier), shape kept, "
                                  "entropy with random slider scales -> JSON", [
        "concept-edit sliderspace report out/ss-square --seeds 64 --out out/ss-square-report.json   # ~12 min",
        "concept-edit sliderspace report out/ss-square --seeds 16 --scales -2,2 --out r.json   # ~2 min"])
    add_model_args(r)
    r.add_argument("dir", metavar="DIR", help="output directory of `sliderspace discover` (toy world)")
    r.add_argument("--seeds", type=positive_int("--seeds"), default=64, help="seeds per scale")
    r.add_argument("--seed", type=int, default=50_000, help="first seed")
    r.add_argument("--scales", default="-2,-1,1,2", help="scales checked for shape kept (purity uses +-2)")
    r.add_argument("--prompt", help="prompt (default: every prompt of the manifest, one report each)")
    r.add_argument("--out", required=True, help="report .json")
    r.set_defaults(func=cmd_report, check=check_report)


def _check_out_dir(out: str) -> None:
    if os.path.isfile(out):
        raise UsageError(f"--out {out!r} is a file; pass a directory name")
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, "manifest.json")):
        raise UsageError(f"--out {out!r} exists and is not a SliderSpace output; pick a new directory "
                         "(it is replaced as a whole)")


def check_discover(args):
    from ..methods.sliderspace.config import SliderSpaceConfig

    _check_out_dir(args.out)
    check_model_arg(args)
    args.sheet_scale_list = parse_floats(args.sheet_scales, "--sheet-scales")
    if args.sheet_seeds < 0 or args.report_seeds < 0:
        raise UsageError("--sheet-seeds and --report-seeds must be >= 0")
    over = {"prompts": args.prompt} if args.prompt else {}
    cfg, args.recommended = config_with_recommended(args, SliderSpaceConfig, "sliderspace", over)
    args.ckdir = args.checkpoint_dir or args.out.rstrip("/") + ".ckpt"
    if args.resume and not os.path.exists(os.path.join(args.ckdir, "optim.pt")):
        raise UsageError(f"--resume: no checkpoint in {args.ckdir}; run without --resume first")
    return cfg


def cmd_discover(args) -> None:
    from ..methods.sliderspace.method import discover

    cfg = args.cfg
    say_recommended(args, "SliderSpace")
    model = load_model(args)
    res = discover(model, cfg, progress=True, checkpoint_dir=args.ckdir, resume=args.resume)
    extra, labels = None, None
    if model.toy_world and args.report_seeds:
        from ..eval.sliderspace_report import manifest_extra, slider_report

        rep = slider_report(model.pipe, res.artifact, cfg.prompts[0], n_seeds=args.report_seeds,
                            scales=(-2, 2), zero_seeds=2, entropy=False, progress=True)
        extra = manifest_extra(rep)
        res.info["toy_report"] = dict(rep["summary"], note="toy classifier on the first prompt, "
                                      f"{args.report_seeds} seeds at scales -2 and 2")
        labels = [f"{n} {e['moves'] or '-'}" for n, e in zip(res.artifact.names, extra)]
    sheet = None
    if args.sheet_seeds:
        from ..eval.sliderspace_report import slider_sheet

        sheet = slider_sheet(model.pipe, res.artifact, cfg.prompts[0], scales=args.sheet_scale_list,
                             seeds=args.sheet_seeds, labels=labels, progress=True)
    res.save(args.out, sheet=sheet, extra=extra)
    t = res.info["timings"]
    print(json.dumps({"out": args.out, "sliders": len(res.sliders), "timings": t,
                      "cache_reused": not res.info["cache"]["sampled"]}))
    for s, e in zip(res.sliders, extra or [{}] * len(res.sliders)):
        moves = f"  moves {e['moves']} (purity {e['purity']:.2f})" if e else ""
        print(f"  {s['name']}: component {s['component']}, explained variance {s['explained_variance']:.3f}, "
              f"sign {s['sign']:+d}{moves}")


def check_grid(args):
    args.scale_list = parse_floats(args.scales, "--scales")
    out_file(args.out, ".png")
    check_model_arg(args)
    man = os.path.join(args.dir, "manifest.json")
    if not os.path.isfile(man):
        raise UsageError(f"{args.dir} is not a SliderSpace output (no manifest.json); pass the --out "
                         "directory of `concept-edit sliderspace discover`")
    if args.sliders:
        try:
            args.slider_idx = [int(x) for x in args.sliders.replace(";", ",").split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"bad --sliders {args.sliders!r}: write indices like 0,3") from None
    else:
        args.slider_idx = None


def cmd_grid(args) -> None:
    from PIL import Image

    from ..core.artifacts import Artifact
    from ..core.io import atomic_path
    from ..eval.sliderspace_report import slider_sheet
    from ..methods.sliderspace.method import load_sliders

    art, manifest = load_sliders(args.dir)
    idx = args.slider_idx if args.slider_idx is not None else list(range(len(art.names)))
    bad = [i for i in idx if not 0 <= i < len(art.names)]
    if bad:
        raise UsageError(f"--sliders {bad[0]}: {args.dir} holds sliders 0..{len(art.names) - 1}")
    art = Artifact([art.edits[i] for i in idx], [art.names[i] for i in idx])
    info = {s["name"]: s for s in manifest.get("sliders", [])}
    labels = [f"{n} {info.get(n, {}).get('moves') or ''}".strip() for n in art.names]
    model = load_model(args)
    prompt = args.prompt or (manifest.get("prompts") or [""])[0]
    sheet = slider_sheet(model.pipe, art, prompt, scales=args.scale_list, seeds=args.seeds, seed0=args.seed,
                         tile=args.tile, labels=labels, progress=True)
    with atomic_path(args.out, ".png") as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    print(json.dumps({"grid": args.out, "rows": art.names, "columns": args.scale_list, "seeds": args.seeds}))


def check_report(args):
    args.scale_list = parse_floats(args.scales, "--scales")
    if not {-2.0, 2.0} <= set(args.scale_list):
        raise UsageError("--scales must include -2 and 2 (purity is measured there)")
    out_file(args.out, ".json")
    check_model_arg(args)
    if not os.path.isfile(os.path.join(args.dir, "manifest.json")):
        raise UsageError(f"{args.dir} is not a SliderSpace output (no manifest.json)")


def cmd_report(args) -> None:
    from ..core.io import atomic_write_text
    from ..eval.sliderspace_report import slider_report
    from ..methods.sliderspace.method import load_sliders

    art, manifest = load_sliders(args.dir)
    model = load_model(args)
    if not model.toy_world:
        raise UsageError(f"the report scores images with the toy classifier: {model.source} is not a toy-world "
                         f"model (an embedded one, or a directory whose concept_edit.json has \"world\": \"toy\")")
    prompts = [args.prompt] if args.prompt else manifest.get("prompts") or []
    reports = {p: slider_report(model.pipe, art, p, n_seeds=args.seeds, scales=tuple(args.scale_list),
                                seed0=args.seed, progress=True) for p in prompts}
    atomic_write_text(args.out, json.dumps({"dir": args.dir, "reports": reports}, indent=1))
    for p, rep in reports.items():
        print(json.dumps({"prompt": p, **rep["summary"]}))
        for r in rep["sliders"]:
            print(f"  {r['name']}: {r['main'] or '-'} purity {r['purity']:.2f} changes {r['changes']} "
                  f"shape kept {r['shape_kept']} ends {r['ends']}")
