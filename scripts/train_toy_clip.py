"""Train the toy CLIP, evaluate it and write its model card (weights/toy-clip/README.md).

    python scripts/train_toy_clip.py --out weights/toy-clip --work .cache/toy-clip --threads 1

Resumable: rerun the same command after an interruption (checkpoints in --work; batches come
from (seed, step)). A finished run is not retrained: rerunning re-exports, re-evaluates and
rewrites the card. Every field of ``ToyClipConfig`` is an option (e.g. --batch 128).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CARD = """---
library_name: open_clip
pipeline_tag: zero-shot-image-classification
tags: [toy, concept-editing, cpu, clip]
---
# toy-clip: a CLIP of the toy world (v1)

A tiny CLIP (image and text encoders) trained from scratch on the toy world (one shape on a
background, 64x64; spec in `docs/toy-world.md`), so that CLIP-based scores and audits are
measurable on a CPU. It is a plain open_clip `CLIP` with our own model config `{name}`
(`{name}.json` here; the same config inside `open_clip_config.json`), loaded through
open_clip's own create path, offline:

```python
import open_clip
open_clip.add_model_config("weights/toy-clip/{name}.json")
model, _, preprocess = open_clip.create_model_and_transforms(
    "{name}", pretrained="weights/toy-clip/open_clip_model.safetensors")
tokenizer = open_clip.get_tokenizer("{name}")
# or, without registering: open_clip.create_model_and_transforms("local-dir:weights/toy-clip")
```

With concept_edit's helpers (registration is idempotent and happens inside the loader):

```python
from concept_edit.toyworld.clip import load_toy_clip, embed_images, embed_texts, zero_shot
model, preprocess, tokenizer = load_toy_clip()            # weights/toy-clip
zero_shot(images, "colour")       # images: (N, 64, 64, 3) uint8 -> ['red', 'blue', ...]
embed_images(images), embed_texts(["a red circle"])       # L2-normalised (N, {embed_dim})
```

Zero-shot labels use prompt ensembles over the v1 caption grammar: the class embedding of a
value (e.g. `red`) is the normalised mean embedding of every v1 prompt naming it ("a red
circle", "a large red star on a dotted background", ...). Input: 64x64 RGB, open_clip's
default (OpenAI) mean/std; other sizes go through the returned `preprocess` (bicubic resize).

## Architecture

| tower | architecture | parameters |
|---|---|---|
| image | open_clip ModifiedResNet, width {vision_width}, {vision_depth} bottleneck(s) per stage, 64x64 input, attention pool ({vis_heads} heads) -> {embed_dim} | {vis_params:,} |
| text | open_clip text transformer, {text_layers} layers x {text_width} wide, {text_heads} heads, context {context_length}, the real CLIP BPE vocabulary (49,408 tokens, open_clip's SimpleTokenizer) -> {embed_dim} | {text_params:,} |
| total | (the 49,408 x {text_width} token table is {tok_params:,} of these; only the toy world's few words are trained) | {params:,} |

Size on disk: {size_mb:.1f} MB (`open_clip_model.safetensors`, fp32). Learned temperature:
logit scale {logit_scale:.1f}.

## How it was trained (reproduce)

```bash
{command}
```
Seeded (seed {seed}), resumable (rerun the same command after an interruption; checkpoints every
{ckpt_every} steps in `--work`, batches drawn from (seed, step)). Data: {n_renders:,} toy renders;
the first {n_recon:,} of them also round-tripped through the toy-world VAE (the generated-image
look); {n_samples} toy-world samples (the 96 full prompts x {sample_seeds} seeds, default sampler,
labelled by their prompt). A batch of {batch} images draws {p_render:.0%} renders,
{p_recon:.0%} VAE round-trips and {p_sample:.0%} samples, with horizontal flips (every v1 shape and
background is mirror-symmetric), +-3% channel gain and pixel noise. Captions: the v1 grammar
with size, colour and background each dropped with p = {p_drop} (no empty captions), plus per
image a hard negative (its caption with one named attribute changed). Loss: symmetric InfoNCE
with a learnable temperature whose targets are soft over every true (image, caption) pair in
the batch: a caption is a positive of every image it describes ("a circle" matches every circle
in the batch; duplicate captions are merged), so near-duplicates are not pushed apart and
captions differing in one attribute are negatives. {steps:,} steps, AdamW lr {lr} (warm-up
{warmup}, cosine), weight decay {weight_decay}, SparseAdam for the token table.

Time on a 2-core CPU machine (1 torch thread, other work running beside it at times):
{times}

## What it measures (`scripts/train_toy_clip.py` evaluates after training)

| check | shape | colour | size | background |
|---|---|---|---|---|
| zero-shot accuracy on {r_n:,} fresh renders (seed {r_seed}) | {r_shape:.3f} | {r_colour:.3f} | {r_size:.3f} | {r_background:.3f} |
| the same with one plain template, "{one_template}" (e.g. "a photo of a red") | {o_shape:.3f} | {o_colour:.3f} | {o_size:.3f} | {o_background:.3f} |
| agreement with `weights/toy-classifier` on {s_n} toy-world samples | {a_shape:.3f} | {a_colour:.3f} | {a_size:.3f} | {a_background:.3f} |
| toy CLIP vs the prompt on those samples (named attributes) | {p_shape:.3f} | {p_colour:.3f} | {p_size:.3f} | {p_background:.3f} |
| toy classifier vs the prompt on those samples (named attributes) | {c_shape:.3f} | {c_colour:.3f} | {c_size:.3f} | {c_background:.3f} |

Targets: zero-shot accuracy >= 0.97 per attribute on fresh renders; agreement with the toy
classifier >= 0.95 per attribute on toy-world samples. The samples come from v1 captions of
fresh scenes (dropout 0.2 per attribute, never empty; sample seeds from {s_seed}, none of them
used in training); {s_none} sample(s) that the classifier saw as 'no shape' are left out of the
agreement. Evaluation took {eval_s:.0f} s.
"""


def _fmt_s(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def write_card(out: str, cfg, ev: dict, times: dict, command: str) -> str:
    from concept_edit.toyworld.clip import ONE_TEMPLATE, load_toy_clip

    model, _, _ = load_toy_clip(out)
    vis = sum(p.numel() for p in model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    tok = model.token_embedding.weight.numel()
    size = os.path.getsize(os.path.join(out, "open_clip_model.safetensors")) / 1e6
    n_samples = 96 * cfg.sample_seeds
    p_recon = cfg.p_recon if cfg.n_recon else 0.0
    p_sample = cfg.p_sample if cfg.sample_seeds else 0.0
    tl = ", ".join(f"{k} {_fmt_s(v)}" for k, v in times.items() if k != "total")
    times_txt = f"{_fmt_s(times['total'])} in all ({tl})."
    r, a = ev["renders"], ev.get("samples_agreement", {})
    pv, cv = ev.get("samples_toy_clip_vs_prompt", {}), ev.get("samples_classifier_vs_prompt", {})
    keys = ("shape", "colour", "size", "background")
    fill = {f"r_{k}": r[k] for k in keys}
    fill.update({f"a_{k}": a.get(k, float("nan")) for k in keys})
    fill.update({f"p_{k}": pv.get(k, float("nan")) for k in keys})
    fill.update({f"c_{k}": cv.get(k, float("nan")) for k in keys})
    fill.update({f"o_{k}": ev.get("renders_one_template", {}).get(k, float("nan")) for k in keys})
    text = CARD.format(
        name=cfg.name, embed_dim=cfg.embed_dim, vision_width=cfg.vision_width, vision_depth=cfg.vision_depth,
        vis_heads=cfg.vision_width * 32 // 64, vis_params=vis, text_layers=cfg.text_layers,
        text_width=cfg.text_width, text_heads=cfg.text_heads, context_length=cfg.context_length,
        text_params=total - vis - 1, tok_params=tok, params=total, size_mb=size,
        logit_scale=float(model.logit_scale.detach().exp()), command=command, seed=cfg.seed,
        ckpt_every=cfg.ckpt_every, n_renders=cfg.n_renders, n_recon=cfg.n_recon, n_samples=n_samples,
        sample_seeds=cfg.sample_seeds, batch=cfg.batch, p_render=1 - p_recon - p_sample, p_recon=p_recon,
        p_sample=p_sample, p_drop=cfg.p_drop, steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup,
        weight_decay=cfg.weight_decay, times=times_txt, r_n=r["n"], r_seed=r["seed"], s_n=a.get("n", 0),
        s_seed=ev.get("samples_seed", "-"), one_template=ONE_TEMPLATE, s_none=a.get("classifier_none", 0), eval_s=ev["eval_s"],
        **fill)
    path = os.path.join(out, "README.md")
    with open(path, "w") as f:
        f.write(text)
    return path


def main(argv=None) -> None:
    from concept_edit.toyworld.clip import ToyClipConfig
    from concept_edit.toyworld.clip_train import data_times, evaluate, train_toy_clip

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="weights/toy-clip", help="exported open_clip directory")
    p.add_argument("--work", default=".cache/toy-clip", help="scratch dir: data caches, checkpoints, logs")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the checkpoint in --work (default; --no-resume restarts)")
    p.add_argument("--eval-renders", type=int, default=1000, help="fresh renders for zero-shot accuracy")
    p.add_argument("--eval-samples", type=int, default=128, help="toy-world samples for agreement (0: skip)")
    p.add_argument("--no-card", action="store_true", help="do not write README.md into --out")
    for f in dataclasses.fields(ToyClipConfig):
        tp = type(f.default)
        kw = {"action": argparse.BooleanOptionalAction} if tp is bool else {"type": tp}
        p.add_argument("--" + f.name.replace("_", "-"), default=None,
                       help=f.metadata["help"] + f" (default {f.default})", **kw)
    a = p.parse_args(argv)
    skip = {"out", "work", "resume", "eval_renders", "eval_samples", "no_card"}
    cfg = ToyClipConfig.from_dict({k: v for k, v in vars(a).items() if k not in skip and v is not None})
    t0 = time.time()
    train_toy_clip(cfg, a.out, a.work, resume=a.resume)
    ev = evaluate(a.out, n_renders=a.eval_renders, n_samples=a.eval_samples, toy_world=cfg.toy_world)
    with open(os.path.join(a.work, f"{cfg.name}-eval.json"), "w") as f:
        json.dump(ev, f, indent=1)
    print(json.dumps(ev, indent=1))
    times = {}
    names = {"renders": "renders", "recon": "VAE round-trips", "samples": "toy-world samples"}
    for fname, s in data_times(a.work).items():
        for key, label in names.items():
            if fname.startswith(key):
                times[label] = s
    with open(os.path.join(a.work, f"{cfg.name}-log.jsonl")) as f:
        done = [json.loads(line) for line in f if '"done"' in line]
    times[f"training loop {cfg.steps:,} steps"] = done[-1]["train_s"] if done else 0.0
    times["evaluation"] = ev["eval_s"]
    times["total"] = sum(times.values())
    print(f"this session: {time.time() - t0:.0f} s")
    if not a.no_card:
        cmd = "python " + " ".join(["scripts/train_toy_clip.py"] + (argv if argv is not None else sys.argv[1:]))
        print(write_card(a.out, cfg, ev, times, cmd))


if __name__ == "__main__":
    main()
