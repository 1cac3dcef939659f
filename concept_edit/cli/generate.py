"""``concept-edit generate``, ``sites`` and ``make-tiny``."""
from __future__ import annotations

import json
import os
import time

from .common import (UsageError, add_command, add_model_args, check_model_arg, load_model, parse_apply,
                     parse_size, positive_int)


def add_cli(sub) -> None:
    g = add_command(sub, "generate", "generate images (optionally with edits applied)", [
        "concept-edit generate --prompt 'a red circle' --n 8 --out out/red   # ~5 s",
        "concept-edit generate --prompt 'a circle' --apply out/uce.safetensors --apply out/size.safetensors@2 "
        "--out out/edited"])
    add_model_args(g)
    g.add_argument("--prompt", required=True, help="text prompt")
    g.add_argument("--negative-prompt", default=None, help="negative prompt (CFG's unconditional branch)")
    g.add_argument("--n", type=positive_int("--n"), default=4, help="number of images (seeds SEED..SEED+N-1)")
    g.add_argument("--seed", type=int, default=0, help="seed of the first image")
    g.add_argument("--steps", type=positive_int("--steps"), default=None, help="sampling steps (default: the model's)")
    g.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    g.add_argument("--guidance-below", type=float, default=None, metavar="F",
                   help="guidance interval: steps above F of the timestep range unguided, 1 = every step "
                        "guided (default: the model's)")
    g.add_argument("--size", default=None, help="HxW in pixels, e.g. 64x64 (default: the model's)")
    g.add_argument("--apply", action="append", default=[], metavar="FILE[@SCALE]",
                   help="apply an artifact (edit or slider) at SCALE; repeatable")
    g.add_argument("--slider-start", type=float, default=None,
                   help="fraction of the steps before sliders switch on (default: the file's)")
    g.add_argument("--force", action="store_true", help="apply artifacts made for another base")
    g.add_argument("--batch", type=positive_int("--batch"), default=16, help="images per forward pass")
    g.add_argument("--out", default="out/generate", help="output directory (PNGs + manifest.json)")
    g.set_defaults(func=cmd_generate, check=check_generate)


def check_generate(args):
    if args.slider_start is not None and not 0 <= args.slider_start <= 1:
        raise UsageError(f"--slider-start must be a fraction in [0, 1], got {args.slider_start}")
    if args.guidance_below is not None and not 0 < args.guidance_below <= 1:
        raise UsageError(f"--guidance-below must be a fraction in (0, 1] (1: every step guided), got {args.guidance_below}")
    parse_size(args.size, 1)  # format and positivity now; the model's multiple after loading
    args.applies = [parse_apply(a) for a in args.apply]
    for path, _ in args.applies:
        from ..core.io import read_artifact_meta

        read_artifact_meta(path)
    _check_out_dir(args.out)
    check_model_arg(args)


def _check_out_dir(out: str) -> None:
    if os.path.isfile(out):
        raise UsageError(f"--out {out!r} is a file; pick a directory")
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, "manifest.json")):
        raise UsageError(f"--out {out!r} exists and is not a concept-edit output; pick a new directory")


def write_images(out: str, images, manifest: dict) -> None:
    """Write DIR/000.png... and manifest.json atomically (the directory appears complete)."""
    from PIL import Image

    from ..core.io import atomic_dir

    _check_out_dir(out)
    with atomic_dir(out) as tmp:
        for i, img in enumerate(images):
            Image.fromarray(img).save(os.path.join(tmp, f"{i:03d}.png"))
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)


def apply_all(model, applies: list[tuple[str, float]], start: float | None, force: bool) -> list[dict]:
    from ..core.artifacts import apply_artifact
    from ..core.io import file_sha256

    rows = []
    for i, (path, scale) in enumerate(applies or []):
        h = apply_artifact(model.pipe, path, scale=scale, start=start, force=force, name=f"apply{i}")
        rows.append({"file": os.path.basename(path), "sha256": file_sha256(path), "scale": scale,
                     "kind": h.meta["kind"], "method": h.meta.get("method"),
                     "start": start if start is not None else h.meta.get("lora", {}).get("start")})
    return rows


def cmd_generate(args) -> None:
    from .. import __version__
    from ..core.sampling import SampleSettings, generate

    model = load_model(args)
    hw = parse_size(args.size, model.backbone.size_multiple(model.pipe))
    applied = apply_all(model, args.applies, args.slider_start, args.force)
    s = SampleSettings(prompt=args.prompt, negative_prompt=args.negative_prompt, n=args.n,
                       seed=args.seed, steps=args.steps, guidance=args.guidance, guidance_below=args.guidance_below,
                       height=hw[0] if hw else None, width=hw[1] if hw else None, batch=args.batch)
    s = s.resolved(model.pipe)
    t0 = time.time()
    images = generate(model.pipe, s, progress=True)
    took = time.time() - t0
    manifest = {"concept_edit": __version__, "model": model.source, "family": model.backbone.name,
                "prompt": s.prompt, "negative_prompt": s.negative_prompt,
                "n": s.n, "seed": s.seed, "seeds": [s.seed + i for i in range(s.n)], "steps": s.steps,
                "guidance": s.guidance, "guidance_below": s.guidance_below, "height": s.height, "width": s.width, "dtype": args.dtype,
                "device": args.device, "scheduler": type(model.pipe.scheduler).__name__,
                "applied": applied, "seconds": round(took, 3)}
    write_images(args.out, images, manifest)
    print(f"wrote {len(images)} images to {args.out} ({took:.1f} s)")


def cmd_sites(args) -> None:
    check_model_arg(args)
    model = load_model(args)
    bb = model.backbone
    table = bb.table(model.pipe)
    if args.json:
        print(json.dumps({"family": bb.name, "denoiser": bb.denoiser,
                          "groups": {g: [{"path": p, "shape": s} for p, s in rows]
                                     for g, rows in table.items()}}, indent=1))
        return
    print(f"family: {bb.name} ({bb.description}); denoiser: {bb.denoiser}")
    for g, rows in table.items():
        print(f"\n[{g}] {len(rows)} layers")
        for p, s in rows:
            print(f"  {p}  {tuple(s) if s else ''}")


def cmd_make_tiny(args) -> None:
    from ..core.tiny import FAMILIES, make_tiny

    if args.family not in FAMILIES:
        raise UsageError(f"unknown family {args.family!r}; choose one of {', '.join(FAMILIES)}")
    make_tiny(args.family, args.out_dir)
    print(f"wrote tiny {args.family} pipeline to {args.out_dir}")
