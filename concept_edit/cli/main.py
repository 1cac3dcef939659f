"""The ``concept-edit`` command line: thin parsing over the public API.

Example::

    concept-edit generate --prompt "a red circle" --n 4 --out out/red
    concept-edit sites --json
    concept-edit make-tiny sdxl /tmp/tiny-sdxl

Parsing, ``--help`` and every check that needs no model run before torch or diffusers are
imported; errors are one line (``--debug`` shows the traceback).
"""
from __future__ import annotations

import os
import re
import sys

from .common import Parser, UsageError, add_command, fail

ERROR_TYPES = ("UsageError", "ConfigError", "ArtifactError", "ModelLoadError", "SiteError", "PluginError",
               "LaunchError", "FileNotFoundError", "ValueError", "SafetensorError")


def build_parser() -> Parser:
    from .. import __version__
    from . import audit, distill, esd, generate, slider, sliderspace, toyworld, uce

    p = Parser(prog="concept-edit", description="Edit concepts inside text-to-image diffusion models: "
               "erase (ESD, UCE), slide (Concept Sliders), audit. Every command runs offline on the "
               "embedded toy world by default.",
               epilog="examples:\n  concept-edit generate --prompt 'a red circle' --out out/red\n"
                      "  concept-edit uce --config configs/uce/erase-circle.yaml --out out/uce.safetensors\n"
                      "  concept-edit COMMAND --help")
    p.add_argument("--version", action="version", version=f"concept-edit {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    p.add_argument("--verbose", action="store_true", help="show library loading progress and warnings")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: $CONCEPT_EDIT_THREADS, else torch's; on a busy "
                        "machine 1 can be faster than 2)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate.add_cli(sub)
    s = add_command(sub, "sites", "the family and every site group with module paths and shapes",
                    ["concept-edit sites", "concept-edit sites /models/tiny-sdxl --json"])
    s.add_argument("model", nargs="?", default=None, help="model (default: the embedded toy world)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _model_opts_without_model(s)
    s.set_defaults(func=generate.cmd_sites)
    t = add_command(sub, "make-tiny", "build a tiny random pipeline of a family (offline)",
                    ["concept-edit make-tiny sdxl /tmp/tiny-sdxl"])
    t.add_argument("family", help="sd1, sd2, sdxl, sd3, flux or pixart")
    t.add_argument("out_dir", help="directory to write (save_pretrained layout)")
    t.set_defaults(func=generate.cmd_make_tiny)
    uce.add_cli(sub)
    esd.add_cli(sub)
    slider.add_cli(sub)
    sliderspace.add_cli(sub)
    toyworld.add_cli(sub)
    audit.add_cli(sub)
    distill.add_cli(sub)
    return p


def _model_opts_without_model(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="weights dtype")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    g.add_argument("--attention", default="sdpa", choices=["sdpa", "xformers"], help="attention kernel")
    g.add_argument("--family", default=None, help="family of a single-file checkpoint")


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


def _threads(n: int | None) -> None:
    n = n or (int(os.environ["CONCEPT_EDIT_THREADS"]) if os.environ.get("CONCEPT_EDIT_THREADS") else None)
    if n:
        if n < 1:
            raise UsageError(f"--threads must be >= 1, got {n}")
        import torch

        torch.set_num_threads(n)


def main(argv=None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    try:
        check = getattr(args, "check", None)
        args.cfg = check(args) if check else None
        _threads(args.threads)
        args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        hint = " (rerun with --resume to continue from the last checkpoint)" if hasattr(args, "resume") else ""
        fail(f"interrupted{hint}", 130)
    except Exception as e:  # one line for the errors we know; everything with --debug
        if args.debug or type(e).__name__ not in ERROR_TYPES and not isinstance(e, (ValueError, OSError)):
            raise
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
