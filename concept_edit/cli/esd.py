"""``concept-edit esd``: fine-tune erasure; writes one safetensors (LoRA or changed tensors).

Multi-GPU / multi-node: ``accelerate launch --num_processes 8 $(which concept-edit) esd --device
cuda ...`` (each process samples its own x_t; accelerate averages the gradients; on CPUs:
``accelerate launch --multi_gpu --num_processes N ... --device cpu``).
"""
from __future__ import annotations

import os

from .common import (UsageError, add_command, add_config_args, add_model_args, check_model_arg,
                     config_with_recommended, load_model, out_file, positive_int, say_recommended,
                     split_list)

EXAMPLES = [
    "concept-edit esd --concept circle --variant x --config configs/esd/toy-circle-x.yaml "
    "--out out/esd.safetensors   # ~4 min on 2 CPU cores",
    "concept-edit esd --config configs/esd/toy-circle-striped.yaml --out out/esd-two.safetensors  # ~6 min",
    "concept-edit esd --config configs/esd/toy-circle-x.yaml --out out/esd.safetensors --resume  "
    "# continue after an interruption",
]


def add_cli(sub) -> None:
    from ..methods.esd.config import EsdConfig

    p = add_command(sub, "esd", "ESD: fine-tune erasure (LoRA or direct), progress bar with loss", EXAMPLES)
    add_model_args(p)
    g = p.add_argument_group("shortcuts")
    g.add_argument("--concept", action="append", help="concept to erase (repeat, or 'a; b')")
    g.add_argument("--preserve", action="append",
                   help="prompt to keep as the frozen model draws it (repeat, or 'a; b')")
    g.add_argument("--steps", type=positive_int("--steps"), dest="cfg__iterations",
                   help="same as --iterations")
    add_config_args(p, EsdConfig, skip=("preserve",))
    r = p.add_argument_group("run")
    r.add_argument("--checkpoint-dir", help="checkpoint directory (default: OUT.ckpt/, removed on success)")
    r.add_argument("--resume", action="store_true", help="continue from the checkpoint directory")
    r.add_argument("--out", required=True, help="output .safetensors")
    r.add_argument("--no-check", action="store_true",
                   help="skip the before/after check of the concept (toy world: a few seeds, ~15 s)")
    p.set_defaults(func=run_cli, check=check)


def check(args):
    from ..methods.esd.config import EsdConfig

    out_file(args.out, ".safetensors")
    check_model_arg(args)
    over = {}
    if args.concept:
        over["concepts"] = [c for a in args.concept for c in split_list(a)]
    if args.preserve:
        over["preserve"] = [c for a in args.preserve for c in split_list(a)]
    cfg, args.recommended = config_with_recommended(args, EsdConfig, "esd", over)
    args.ckdir = args.checkpoint_dir or args.out + ".ckpt"
    if args.resume and not os.path.exists(os.path.join(args.ckdir, "optim.pt")):
        raise UsageError(f"--resume: no checkpoint in {args.ckdir}; run without --resume first")
    return cfg


def run_cli(args) -> None:
    from ..core.trainloop import launch_device
    from ..methods.esd.train import train_esd

    cfg = args.cfg
    args.device = launch_device(args.device)  # under a multi-GPU launch: this rank's own GPU
    model = load_model(args)
    say_recommended(args, "ESD")
    res = train_esd(model.pipe, cfg, checkpoint_dir=args.ckdir, resume=args.resume)
    if not res.is_main:  # the other processes of a launch: rank 0 writes and reports
        return
    meta = res.save(args.out)
    loss = f"final loss {res.losses[-1]:.5f}, " if res.losses else ""
    print(f"ESD-{cfg.variant} on {', '.join(cfg.concept_names())}: {res.loop.report()}, {loss}"
          f"{res.seconds:.0f} s -> {args.out} ({meta['kind']})")
    if not getattr(args, "no_check", False):
        from .erasure_check import erasure_check

        res.edit.remove()  # the check applies the written file to the unedited model
        erasure_check(model, args.out, cfg.concept_names())
