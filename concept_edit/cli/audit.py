"""``concept-edit audit``: run the erasure probes for a concept on an edited model, write a report."""
from __future__ import annotations

import os

from .common import UsageError, add_command, add_model_args, check_model_arg, load_model, parse_apply, parse_set

EXAMPLES = [
    "concept-edit audit --edit out/uce-circle.safetensors --concept configs/audit/circle.yaml "
    "--report out/audit-uce   # quick budget, ~3 min on the toy world",
    "concept-edit audit --negative-prompt circle --concept configs/audit/circle.yaml --report out/audit-neg",
    "concept-edit audit --edit out/esd.safetensors --concept configs/audit/circle.yaml --probes standard,noise "
    "--budget full --set noise.etas=[1.0,1.5,1.85] --report out/audit-esd",
]


def add_cli(sub) -> None:
    p = add_command(sub, "audit", "erasure audit: which probes bring an erased concept back (report)",
                    EXAMPLES, description="Probe an edited model for a concept (standard prompts, inpainting, "
                    "diffusion completion, eta > 1 noise, classifier guidance, Ring-A-Bell vector, textual "
                    "inversion, prompt attack, interference, alternatives); base vs edited rates, per sample "
                    "and best-of-N. Writes DIR/results.json, DIR/report.html, DIR/images/<probe>/*.png.")
    add_model_args(p)
    p.add_argument("--edit", action="append", default=[], metavar="FILE[@SCALE]",
                   help="edit artifact(s) applied to the audited copy; none = audit the base (null edit)")
    p.add_argument("--negative-prompt", default=None,
                   help="audit sampling-time 'erasure': the edited model samples with this negative prompt")
    p.add_argument("--concept", required=True, metavar="YAML", help="concept definition (configs/audit/*.yaml)")
    p.add_argument("--probes", default="all", help="all, or a comma list: standard,inpaint,completion,noise,"
                                                   "guidance,ringabell,inversion,attack,interference,alternatives")
    p.add_argument("--budget", default="quick", choices=["quick", "full"], help="probe sizes")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--set", action="append", default=[], dest="set_values", metavar="PROBE.KEY=VALUE",
                   help="override a probe setting (YAML value), e.g. --set noise.etas=[1.0,1.85]; repeatable")
    p.add_argument("--batch", type=int, default=16, help="images per sampler call")
    p.add_argument("--cache-dir", default=".cache/audit", help="where trained guidance classifiers are cached")
    p.add_argument("--force", action="store_true", help="apply edits made for another base")
    p.add_argument("--report", required=True, metavar="DIR", help="output directory")
    p.set_defaults(func=run_cli, check=check)


def _overrides(items) -> dict:
    out: dict = {}
    for key, value in parse_set(items).items():
        probe, dot, field = key.partition(".")
        if not dot or not field:
            raise UsageError(f"bad --set {key!r}: write PROBE.KEY=VALUE, e.g. --set noise.etas=[1.0,1.85]")
        out.setdefault(probe, {})[field] = value
    return out


def check(args):
    from ..core.io import read_artifact_meta
    from ..eval.audit import load_concept, resolve_probes

    args.concept_cfg = load_concept(args.concept)
    args.probe_names = resolve_probes(args.probes)
    args.edits = [parse_apply(e) for e in args.edit]
    for path, _ in args.edits:
        read_artifact_meta(path)
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    r = args.report
    if os.path.isfile(r):
        raise UsageError(f"--report {r!r} is a file; pick a directory")
    if os.path.isdir(r) and os.listdir(r) and not os.path.exists(os.path.join(r, "results.json")):
        raise UsageError(f"--report {r!r} exists and is not an audit report; pick a new directory")
    args.overrides = _overrides(args.set_values)
    if args.overrides:
        from ..eval.probes import PROBES

        for name, over in args.overrides.items():
            if name not in args.probe_names:
                raise UsageError(f"--set {name}.*: probe {name!r} is not being run (--probes {args.probes})")
            PROBES.get(name).make_config(args.budget, {**args.concept_cfg.probes.get(name, {}), **over})
    check_model_arg(args)
    return None


def run_cli(args) -> None:
    from ..core.artifacts import apply_artifact
    from ..core.io import file_sha256
    from ..core.shard import Shard
    from ..eval.audit import audit, write_report

    shard = Shard.from_launch("cuda" if str(args.device).startswith("cuda") else "cpu")
    if shard.world > 1:
        from ..core.trainloop import launch_device

        args.device = launch_device(args.device)  # each rank on its own GPU

    base = load_model(args)
    edited = base
    edits = []
    if args.edits:
        edited = load_model(args)  # a second copy: the base stays untouched for the reference runs
        for i, (path, scale) in enumerate(args.edits):
            h = apply_artifact(edited.pipe, path, scale=scale, force=args.force, name=f"audit{i}")
            edits.append({"file": os.path.basename(path), "sha256": file_sha256(path), "scale": scale,
                          "kind": h.meta["kind"], "method": h.meta.get("method")})
    res = audit(base.pipe, edited.pipe, args.concept_cfg, probes=args.probe_names, budget=args.budget,
                seed=args.seed, negative_prompt=args.negative_prompt, overrides=args.overrides,
                cache_dir=args.cache_dir, batch=args.batch, progress=True, meta={"edits": edits}, shard=shard)
    if not shard.is_main:  # the other processes of a launch: rank 0 writes and reports
        return
    write_report(res, args.report)
    print(f"{'probe':<13} {'base':>6} {'b-of-N':>6} {'edited':>6} {'b-of-N':>6} {'N':>3} {'time s':>7} {'evals':>7}")
    for name, p in res["probes"].items():
        sb, se = p["summary"]["base"], p["summary"]["edited"]
        f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"{name:<13} {f(sb['rate']):>6} {f(sb['best_of_n']):>6} {f(se['rate']):>6} {f(se['best_of_n']):>6} "
              f"{p['N'] if p['N'] is not None else '-':>3} {p['time_s']:>7.1f} {p['denoiser_evals']:>7}"
              + ("" if p["status"] == "ok" else f"  ({p['status']})"))
    print(f"total {res['total_time_s']:.1f} s -> {args.report}/report.html")
