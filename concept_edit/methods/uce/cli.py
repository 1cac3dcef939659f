"""``concept-edit uce``: closed-form erase / moderate / debias, writing one safetensors edit."""
from __future__ import annotations

import time


def add_cli(sub) -> None:
    from ...cli.common import add_model_args

    p = sub.add_parser("uce", help="UCE: closed-form erase, moderate or debias (seconds)",
                       description="Unified Concept Editing. Lists are ';'-separated.")
    add_model_args(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--erase", help="concepts to erase, e.g. 'circle; striped'")
    what.add_argument("--moderate", help="many concepts to send to '' at once")
    what.add_argument("--debias", help="concepts to debias, e.g. 'circle'")
    p.add_argument("--guide", help="guide concept(s): one, or one per erased concept (default ''); "
                                   "'a|b' averages guides")
    p.add_argument("--guide-eta", type=float, help="push targets past the guide, away from the concept")
    p.add_argument("--preserve", help="concepts to keep, e.g. 'square; star'")
    p.add_argument("--attributes", help="debias: attribute words, e.g. 'red; blue'")
    p.add_argument("--ratios", help="debias: wanted shares, e.g. 0.5,0.5")
    p.add_argument("--token-policy", choices=["last", "last+eos", "all"])
    p.add_argument("--sites", help="site group: text_kv (default) or text_in")
    p.add_argument("--lamb", type=float)
    p.add_argument("--erase-scale", type=float)
    p.add_argument("--preserve-scale", type=float)
    p.add_argument("--templates", help="prompt templates, e.g. '{}; a picture of a {}'")
    p.add_argument("--rounds", type=int)
    p.add_argument("--scorer", help="debias scorer: toy (default) or clip:ARCH@WEIGHTS")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="YAML config (see configs/uce/); flags override it")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.set_defaults(func=run_cli)


def run_cli(args) -> None:
    from ...cli.common import UsageError, load_model, split_list
    from .config import UceConfig

    over = {}
    if args.erase is not None:
        over.update(mode="erase", edit=split_list(args.erase))
    if args.moderate is not None:
        over.update(mode="moderate", edit=split_list(args.moderate))
    if args.debias is not None:
        over.update(mode="debias", edit=split_list(args.debias))
    if args.guide is not None:
        over["guide"] = [g.strip() for g in args.guide.split(";")] if args.guide else [""]
    for key in ("preserve", "attributes", "templates"):
        v = getattr(args, key)
        if v is not None:
            over[key] = split_list(v)
    if args.ratios is not None:
        try:
            over["ratios"] = [float(x) for x in args.ratios.replace(";", ",").split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"bad --ratios {args.ratios!r}: write numbers like 0.5,0.5") from None
    for key in ("guide_eta", "token_policy", "sites", "lamb", "erase_scale", "preserve_scale", "rounds",
                "scorer", "seed"):
        v = getattr(args, key)
        if v is not None:
            over[key] = v
    if not args.out.endswith(".safetensors"):
        raise UsageError(f"--out {args.out!r}: write a .safetensors file name")
    cfg = UceConfig.from_yaml(args.config, **over) if args.config else UceConfig.from_dict(over)
    import concept_edit.eval  # noqa: F401  (registers the clip scorer)
    import concept_edit.toyworld.classifier  # noqa: F401  (registers the toy scorer)

    from .method import uce_edit

    pipe = load_model(args)
    t0 = time.time()
    res = uce_edit(pipe, cfg)
    meta = res.save(args.out)
    print(f"UCE {cfg.mode}: edited {len(res.tensors)} tensors of {meta['base']['family']} in "
          f"{time.time() - t0:.1f} s -> {args.out}")
    for h in res.history:
        print(f"  round {h['round']}: observed {h['observed']} (max error {h['max_error']:.3f})")
