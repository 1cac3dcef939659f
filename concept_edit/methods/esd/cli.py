"""``concept-edit esd``: fine-tune erasure; writes one safetensors (LoRA or changed tensors).

Multi-GPU / multi-node: ``accelerate launch --num_processes 8 $(which concept-edit) esd ...``
(each process samples its own x_t; gradients are averaged across processes).
"""
from __future__ import annotations

import os


def add_cli(sub) -> None:
    from ...cli.common import add_model_args, positive_int

    p = sub.add_parser("esd", help="ESD: fine-tune erasure (LoRA or direct), progress bar with loss")
    add_model_args(p)
    p.add_argument("--concept", action="append", help="concept to erase (repeat, or 'a; b')")
    p.add_argument("--preserve", action="append",
                   help="prompt to keep as the frozen model draws it (repeat, or 'a; b')")
    p.add_argument("--variant", help="x | x-strict | u | self | full")
    p.add_argument("--anchor", help="'' (paper), '{concept}' (newer code) or text to erase from")
    p.add_argument("--eta", type=float)
    p.add_argument("--steps", type=positive_int("--steps"), dest="iterations", help="iterations")
    p.add_argument("--lr", type=float)
    p.add_argument("--train", choices=["lora", "direct"])
    p.add_argument("--rank", type=positive_int("--rank"))
    p.add_argument("--sampler", choices=["bank", "online"])
    p.add_argument("--batch-size", type=positive_int("--batch-size"))
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="YAML config (see configs/esd/); flags override it")
    p.add_argument("--checkpoint-dir", help="checkpoint directory (default OUT.ckpt/)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint directory")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.set_defaults(func=run_cli)


def run_cli(args) -> None:
    from ...cli.common import UsageError, load_model, split_list
    from .config import EsdConfig
    from .train import train_esd

    over = {k: getattr(args, k) for k in ("variant", "anchor", "eta", "iterations", "lr", "train",
                                          "rank", "sampler", "batch_size", "seed")
            if getattr(args, k) is not None}
    if args.concept:
        over["concepts"] = [c for a in args.concept for c in split_list(a)]
    if args.preserve:
        over["preserve"] = [c for a in args.preserve for c in split_list(a)]
    if not args.out.endswith(".safetensors"):
        raise UsageError(f"--out {args.out!r}: write a .safetensors file name")
    cfg = EsdConfig.from_yaml(args.config, **over) if args.config else EsdConfig.from_dict(over)
    ckdir = args.checkpoint_dir or args.out + ".ckpt"
    if args.resume and not os.path.exists(os.path.join(ckdir, "optim.pt")):
        raise UsageError(f"--resume: no checkpoint in {ckdir}; run without --resume first")
    pipe = load_model(args)
    res = train_esd(pipe, cfg, checkpoint_dir=ckdir, resume=args.resume)
    meta = res.save(args.out)
    print(f"ESD-{cfg.variant} on {', '.join(cfg.concept_names())}: {len(res.losses)} steps, final loss "
          f"{res.losses[-1]:.5f}, {res.seconds:.0f} s -> {args.out} ({meta['kind']})")
