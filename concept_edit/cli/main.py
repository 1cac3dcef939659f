"""The ``concept-edit`` command line: thin parsing over the public API.

Example::

    concept-edit generate --prompt "a red circle" --n 4 --out out/red
    concept-edit sites weights/toy-world --json
    concept-edit make-tiny sdxl /tmp/tiny-sdxl
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from .common import (Parser, UsageError, add_model_args, fail, load_model, parse_apply, parse_size,
                     positive_int)


def cmd_sites(args) -> None:
    from ..core.families import detect_family, get_family, site_table
    from ..core.loading import load_pipeline

    pipe = load_pipeline(args.model, family=args.family)
    fam = detect_family(pipe)
    table = site_table(pipe)
    if args.json:
        print(json.dumps({"family": fam, "denoiser": get_family(fam).denoiser,
                          "groups": {g: [{"path": p, "shape": s} for p, s in rows]
                                     for g, rows in table.items()}}, indent=1))
        return
    print(f"family: {fam} ({get_family(fam).description}); denoiser: {get_family(fam).denoiser}")
    for g, rows in table.items():
        print(f"\n[{g}] {len(rows)} layers")
        for p, s in rows:
            print(f"  {p}  {tuple(s) if s else ''}")


def size_multiple(pipe) -> int:
    from ..core.families import detect_family

    f = detect_family(pipe)
    vsf = getattr(pipe, "vae_scale_factor", 8)
    patch = getattr(getattr(pipe, "transformer", None), "config", None)
    patch = getattr(patch, "patch_size", 1) or 1
    return vsf * (2 if f == "flux" else patch)


def write_images(out: str, images, manifest: dict) -> None:
    """Write DIR/000.png... and manifest.json atomically (the directory appears complete)."""
    from PIL import Image

    from ..core.io import atomic_dir

    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, "manifest.json")):
        raise UsageError(f"--out {out!r} exists and is not a concept-edit output; pick a new directory")
    with atomic_dir(out) as tmp:
        for i, img in enumerate(images):
            Image.fromarray(img).save(os.path.join(tmp, f"{i:03d}.png"))
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)


def apply_all(pipe, applies: list[str], start: float | None, force: bool) -> list[dict]:
    from ..core.artifacts import apply_artifact
    from ..core.io import file_sha256

    rows = []
    for i, a in enumerate(applies or []):
        path, scale = parse_apply(a)
        h = apply_artifact(pipe, path, scale=scale, start=start, force=force, name=f"apply{i}")
        rows.append({"file": os.path.abspath(path), "sha256": file_sha256(path), "scale": scale,
                     "kind": h.meta["kind"], "method": h.meta.get("method"),
                     "start": start if start is not None else h.meta.get("lora", {}).get("start")})
    return rows


def cmd_generate(args) -> None:
    from .. import __version__
    from ..core.families import detect_family
    from ..core.sampling import SampleSettings, generate

    if args.slider_start is not None and not 0 <= args.slider_start <= 1:
        raise UsageError(f"--slider-start must be a fraction in [0, 1], got {args.slider_start}")
    pipe = load_model(args)
    hw = parse_size(args.size, size_multiple(pipe))
    applied = apply_all(pipe, args.apply, args.slider_start, args.force)
    s = SampleSettings(prompt=args.prompt, negative_prompt=args.negative_prompt, n=args.n,
                       seed=args.seed, steps=args.steps, guidance=args.guidance,
                       height=hw[0] if hw else None, width=hw[1] if hw else None, batch=args.batch)
    s = s.resolved(pipe)
    t0 = time.time()
    images = generate(pipe, s)
    took = time.time() - t0
    manifest = {"concept_edit": __version__, "model": str(pipe._concept_edit_source),
                "family": detect_family(pipe), "prompt": s.prompt, "negative_prompt": s.negative_prompt,
                "n": s.n, "seed": s.seed, "seeds": [s.seed + i for i in range(s.n)], "steps": s.steps,
                "guidance": s.guidance, "height": s.height, "width": s.width, "dtype": args.dtype,
                "device": args.device, "scheduler": type(pipe.scheduler).__name__,
                "applied": applied, "seconds": round(took, 3)}
    write_images(args.out, images, manifest)
    print(f"wrote {len(images)} images to {args.out} ({took:.1f} s)")


def cmd_make_tiny(args) -> None:
    from ..core.tiny import make_tiny

    make_tiny(args.family, args.out_dir)
    print(f"wrote tiny {args.family} pipeline to {args.out_dir}")


def build_parser() -> argparse.ArgumentParser:
    from ..core.registry import methods
    from . import toyworld as toy_cli

    p = Parser(prog="concept-edit", description="Edit concepts inside text-to-image "
                                "diffusion models: erase (ESD, UCE), slide (Concept Sliders), audit.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("sites", help="the family and every site group with module paths and shapes")
    s.add_argument("model", nargs="?", default=None, help="model (default: the toy world)")
    s.add_argument("--family", default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sites)

    g = sub.add_parser("generate", help="generate images (optionally with edits applied)")
    add_model_args(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--n", type=positive_int("--n"), default=4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=positive_int("--steps"), default=None)
    g.add_argument("--guidance", type=float, default=None)
    g.add_argument("--size", default=None, help="HxW in pixels, e.g. 64x64")
    g.add_argument("--apply", action="append", default=[], metavar="FILE[@SCALE]",
                   help="apply an artifact (edit or slider) at SCALE; repeatable")
    g.add_argument("--slider-start", type=float, default=None,
                   help="fraction of the steps before sliders switch on (default: the file's)")
    g.add_argument("--force", action="store_true", help="apply artifacts made for another base")
    g.add_argument("--batch", type=positive_int("--batch"), default=16)
    g.add_argument("--out", default="out/generate")
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("make-tiny", help="build a tiny random pipeline of a family (offline)")
    t.add_argument("family", help="sd1, sd2, sdxl, sd3, flux or pixart")
    t.add_argument("out_dir")
    t.set_defaults(func=cmd_make_tiny)

    toy_cli.add_cli(sub)
    import concept_edit.methods  # noqa: F401  (methods register themselves)

    for m in methods().values():
        if m.add_cli:
            m.add_cli(sub)
    return p


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--scales -2,-1,0`` -> ``--scales=-2,-1,0``: argparse would read a value starting with
    '-' as an option unless it is a single number."""
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if (tok.startswith("--") and tok != "--" and "=" not in tok and i + 1 < len(argv)
                and re.match(r"^-[\d.][\d.,\s-]*$", argv[i + 1])):
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def main(argv=None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    from ..core.config import ConfigError
    from ..core.io import ArtifactError
    from ..core.loading import ModelLoadError
    from ..core.paths import SiteError

    try:
        args.func(args)
    except (UsageError, ConfigError, ArtifactError, ModelLoadError, SiteError, FileNotFoundError,
            ValueError) as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
