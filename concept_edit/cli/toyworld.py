"""``concept-edit toyworld ...``: train, score, evaluate, render."""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from .common import (UsageError, add_command, add_config_args, add_model_args, config_from_args, load_model,
                     parse_apply, parse_floats, positive_int)


def _load_images(d: str) -> tuple[list[str], np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    if not os.path.isdir(d):
        raise UsageError(f"{d!r} is not a directory of images")
    files = sorted(f for f in glob.glob(os.path.join(d, "*")) if os.path.isfile(f)
                   and not f.endswith((".json", ".txt", ".md")))
    if not files:
        raise UsageError(f"{d!r} holds no images; pass a directory of PNG/JPEG files")
    imgs = []
    for f in files:
        try:
            im = Image.open(f).convert("RGB")
        except (UnidentifiedImageError, OSError):
            raise UsageError(f"{f} is not an image; pass a directory of PNG/JPEG files only") from None
        if im.size != (64, 64):
            im = im.resize((64, 64), Image.BILINEAR)
        imgs.append(np.asarray(im))
    return files, np.stack(imgs)


def cmd_score(args) -> None:
    from ..toyworld.classifier import load_classifier, match_rates, predict

    expect = {}
    for e in args.expect:
        if "=" not in e:
            raise UsageError(f"bad --expect {e!r}: write ATTRIBUTE=VALUE, e.g. --expect shape=circle")
        k, v = e.split("=", 1)
        expect[k.strip()] = v.strip()
    files, imgs = _load_images(args.images)
    preds = predict(load_classifier(args.classifier), imgs)
    rates = match_rates(preds, expect) if expect else {}
    if args.json:
        print(json.dumps({"images": [dict(file=os.path.basename(f), **p) for f, p in zip(files, preds)],
                          "expect": expect, "rates": rates, "n": len(files)}, indent=1))
        return
    for f, p in zip(files, preds):
        print(f"{os.path.basename(f)}: {p['size']} {p['colour']} {p['shape']} on {p['background']} "
              f"(r={p['radius']:.1f})")
    for k, v in rates.items():
        print(f"{k}={expect[k]}: {v:.3f} of {len(files)}")


def cmd_evaluate(args) -> None:
    from ..core.io import atomic_write_text
    from ..toyworld.evaluate import evaluate

    pipe = load_model(args).pipe
    rep = evaluate(pipe, seeds=args.seeds, which=args.prompts, classifier=args.classifier,
                   batch=args.batch, max_prompts=args.max_prompts)
    text = json.dumps(rep if args.per_prompt else {k: v for k, v in rep.items() if k != "per_prompt"},
                      indent=1)
    if args.out:
        atomic_write_text(args.out, json.dumps(rep, indent=1))
    print(text)


def cmd_train(args) -> None:
    from ..toyworld.train import run

    print(run(args.cfg))


def cmd_distill(args) -> None:
    from ..toyworld.distill import run

    print(run(args.cfg))


def cmd_render(args) -> None:
    """Render toy images (optionally pinned attributes) into a directory: data for image sliders."""
    from PIL import Image

    from ..core.io import atomic_dir
    from ..toyworld.render import render, sample_scene

    fixed = {}
    for e in args.fix:
        k, _, v = e.partition("=")
        fixed[k] = float(v) if k == "radius" else v
    rng = np.random.default_rng(args.seed)
    with atomic_dir(args.out) as tmp:
        labels = []
        for i in range(args.n):
            s = sample_scene(rng=rng, **fixed)
            Image.fromarray(render(s)).save(os.path.join(tmp, f"{i:04d}.png"))
            labels.append(s.labels())
        with open(os.path.join(tmp, "labels.json"), "w") as f:
            json.dump(labels, f, indent=1)
    print(f"wrote {args.n} renders to {args.out}")


def cmd_render_pairs(args) -> None:
    """Pairs of the same scene drawn small (low/) and large (high/): an image-pair size slider
    (``toyworld.pairs``)."""
    from ..toyworld.pairs import render_size_pairs

    render_size_pairs(args.out, args.n, args.seed, args.single_caption)
    print(f"wrote {args.n} small/large pairs to {args.out}/low and {args.out}/high")


def _concept(text: str) -> dict:
    if "=" not in text:
        raise UsageError(f"bad --concept {text!r}: write AXIS=VALUE, e.g. shape=circle")
    k, v = (t.strip() for t in text.split("=", 1))
    from ..toyworld.classifier import VOCAB

    if k not in VOCAB or v not in VOCAB[k]:
        raise UsageError(f"bad --concept {text!r}: axes and values are "
                         + "; ".join(f"{a}={'|'.join(vs)}" for a, vs in VOCAB.items()))
    return {k: v}


def cmd_erasure(args) -> None:
    from ..eval.toy import erasure_report, strip

    pipe = load_model(args).pipe
    rep = erasure_report(pipe, _concept(args.concept), edit=args.apply or None, seeds=args.seeds)
    print(json.dumps(strip(rep), indent=1))


def cmd_slider_eval(args) -> None:
    from ..eval.toy import slider_report

    pipe = load_model(args).pipe
    scales = parse_floats(args.scales, "--scales")
    print(json.dumps(slider_report(pipe, args.apply, scales=scales, seeds=args.seeds,
                                   metric=args.metric, start=args.slider_start), indent=1))


def add_cli(sub) -> None:
    p = add_command(sub, "toyworld", "the embedded toy world: train, score, evaluate, render")
    ts = p.add_subparsers(dest="toy_command", required=True, metavar="ACTION")

    s = add_command(ts, "score", "classify toy images; with --expect, the rates that match", [
        "concept-edit toyworld score out/red --expect colour=red --json"])
    s.add_argument("images", help="directory of images")
    s.add_argument("--expect", action="append", default=[], metavar="ATTR=VALUE",
                   help="expected value, e.g. shape=circle; repeatable")
    s.add_argument("--classifier", default=None, help="classifier dir (default: weights/toy-classifier)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_score)

    e = add_command(ts, "evaluate", "the model card's numbers as a JSON table", [
        "concept-edit toyworld evaluate --seeds 64 --max-prompts 64   # the card's table, ~25 min",
        "concept-edit toyworld evaluate --seeds 8 --max-prompts 8     # a quick look, ~30 s"])
    add_model_args(e)
    e.add_argument("--seeds", type=positive_int("--seeds"), default=64, help="seeds per prompt")
    e.add_argument("--prompts", choices=["all", "full", "partial"], default="all", help="which prompts")
    e.add_argument("--classifier", default=None, help="classifier dir (default: weights/toy-classifier)")
    e.add_argument("--max-prompts", type=positive_int("--max-prompts"), default=None,
                   help="a seeded subset of the grammar's prompts, stratified by named attributes "
                        "(the card uses 64; all 240 x 64 seeds takes hours on 2 CPU cores)")
    e.add_argument("--batch", type=positive_int("--batch"), default=64, help="images per forward pass")
    e.add_argument("--per-prompt", action="store_true", help="print every prompt's row too")
    e.add_argument("--out", default=None, help="also write the full JSON (with per-prompt rows) here")
    e.set_defaults(func=cmd_evaluate)

    from ..toyworld.config import ToyTrainConfig

    t = add_command(ts, "train", "train the toy world from scratch (resumable; hours on 2 CPU cores)", [
        "concept-edit toyworld train --work .cache/toyworld --out weights/toy-world   # rerun to resume",
        "concept-edit toyworld train --config configs/toyworld/mmdit.yaml   # the toy MMDiT (SD3-style)",
        "concept-edit toyworld train --unet-steps 200 --out out/toy-small --classifier-out out/clf"])
    add_config_args(t, ToyTrainConfig)
    t.set_defaults(func=cmd_train, check=lambda a: config_from_args(a, ToyTrainConfig))

    from ..toyworld.config import ToyDistillConfig

    d = add_command(ts, "distill", "distil the toy world into a 4-step student (DMD2-style; resumable)", [
        "concept-edit toyworld distill --work .cache/toy-turbo --out weights/toy-turbo   # rerun to resume",
        "concept-edit toyworld distill --steps 20 --eval-every 10 --work out/dw --out out/turbo-small"])
    add_config_args(d, ToyDistillConfig)
    d.set_defaults(func=cmd_distill, check=lambda a: config_from_args(a, ToyDistillConfig))

    r = add_command(ts, "render", "render toy images with pinned attributes", [
        "concept-edit toyworld render out/circles --n 16 --fix shape=circle --fix size=large"])
    r.add_argument("out", help="output directory (PNGs + labels.json)")
    r.add_argument("--n", type=positive_int("--n"), default=16, help="number of renders")
    r.add_argument("--seed", type=int, default=0, help="seed of the scenes")
    r.add_argument("--fix", action="append", default=[], metavar="ATTR=VALUE",
                   help="pin an attribute, e.g. --fix size=large --fix shape=circle")
    r.set_defaults(func=cmd_render)

    er = add_command(ts, "erasure", "erasure table (base vs edited) for one concept", [
        "concept-edit toyworld erasure --concept shape=circle --apply out/uce.safetensors   # ~3 min"])
    add_model_args(er)
    er.add_argument("--concept", required=True, help="AXIS=VALUE, e.g. shape=circle, colour=red")
    er.add_argument("--apply", action="append", default=[], help="edit file(s); none = base only")
    er.add_argument("--seeds", type=positive_int("--seeds"), default=64, help="seeds per prompt")
    er.set_defaults(func=cmd_erasure, check=_check_erasure)

    sl = add_command(ts, "slider", "slider sweep: mean radius per scale, Spearman, preservation", [
        "concept-edit toyworld slider --apply out/size.safetensors --seeds 16"])
    add_model_args(sl)
    sl.add_argument("--apply", required=True, help="the slider file")
    sl.add_argument("--scales", default="-2,-1,0,1,2", help="scales to sweep")
    sl.add_argument("--metric", default="radius", help="radius, or a background value (striped)")
    sl.add_argument("--slider-start", type=float, default=None, help="start fraction (default: the file's)")
    sl.add_argument("--seeds", type=positive_int("--seeds"), default=64, help="seeds per prompt")
    sl.set_defaults(func=cmd_slider_eval, check=lambda a: (parse_apply(a.apply), parse_floats(a.scales, "--scales")))

    rp = add_command(ts, "render-pairs", "small/large pairs of the same scenes (image slider data)", [
        "concept-edit toyworld render-pairs out/pairs --n 64"])
    rp.add_argument("out", help="output directory (low/, high/)")
    rp.add_argument("--n", type=positive_int("--n"), default=64, help="number of pairs")
    rp.add_argument("--seed", type=int, default=0, help="seed of the scenes")
    rp.add_argument("--single-caption", action="store_true",
                    help="write only the full caption (default: also the captions without "
                         "colour / background, one per line)")
    rp.set_defaults(func=cmd_render_pairs)


def _check_erasure(args):
    _concept(args.concept)
    for a in args.apply:
        parse_apply(a)
