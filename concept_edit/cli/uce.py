"""``concept-edit uce``: closed-form erase / moderate / debias, writing one safetensors edit."""
from __future__ import annotations

import time

from .common import (add_command, add_config_args, add_model_args, check_model_arg,
                     config_with_recommended, load_model, out_file, say_recommended, split_list)

EXAMPLES = [
    "concept-edit uce --config configs/uce/erase-circle.yaml --out out/uce.safetensors   # ~20 s",
    "concept-edit uce --erase circle --preserve 'square; triangle; star' --out out/uce-weak.safetensors",
    "concept-edit uce --config configs/uce/debias-circle.yaml --rounds 2 --out out/debias.safetensors  "
    "# slow: rounds x 64 images",
]


def add_cli(sub) -> None:
    from ..methods.uce.config import UceConfig

    p = add_command(sub, "uce", "UCE: closed-form erase, moderate or debias (seconds)", EXAMPLES,
                    description="Unified Concept Editing: one closed-form solve of the layers that read "
                                "text. Lists are ';'-separated.")
    add_model_args(p)
    what = p.add_argument_group("what to edit (shortcuts for --mode/--edit)").add_mutually_exclusive_group()
    what.add_argument("--erase", help="concepts to erase, e.g. 'circle; striped'")
    what.add_argument("--moderate", help="many concepts to send to '' at once")
    what.add_argument("--debias", help="concepts to debias, e.g. 'circle' (slow: generates images)")
    add_config_args(p, UceConfig)
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--no-check", action="store_true",
                   help="skip the before/after check of the erased concepts (toy world: a few seeds, ~15 s)")
    p.set_defaults(func=run_cli, check=check)


def _overrides(args) -> dict:
    over = {}
    for mode in ("erase", "moderate", "debias"):
        v = getattr(args, mode)
        if v is not None:
            over.update(mode=mode, edit=split_list(v))
    if getattr(args, "cfg__guide", None) is not None:  # keep '' items: '; art' = ['', 'art']
        over["guide"] = [g.strip() for g in args.cfg__guide.split(";")] if args.cfg__guide else [""]
    return over


def check(args):
    """Everything that can be checked before the model loads."""
    from ..methods.uce.config import UceConfig

    out_file(args.out, ".safetensors")
    check_model_arg(args)
    cfg, args.recommended = config_with_recommended(args, UceConfig, "uce", _overrides(args))
    return cfg


def run_cli(args) -> None:
    from ..methods.uce.method import uce_edit

    cfg = args.cfg
    model = load_model(args)
    say_recommended(args, "UCE")
    t0 = time.time()
    res = uce_edit(model.pipe, cfg)
    meta = res.save(args.out)
    print(f"UCE {cfg.mode}: edited {len(res.tensors)} tensors of {meta['base']['family']} in "
          f"{time.time() - t0:.1f} s -> {args.out}")
    for h in res.history:
        print(f"  round {h['round']}: observed {h['observed']} (max error {h['max_error']:.3f})")
    if cfg.mode == "erase" and not getattr(args, "no_check", False):
        from .erasure_check import erasure_check

        erasure_check(model, args.out, cfg.edit, guides=cfg.guides())
