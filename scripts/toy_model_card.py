"""Write a toy model's README.md (model card) and samples.png from an evaluate JSON.

    concept-edit toyworld evaluate --seeds 64 --max-prompts 64 --out out/toy-eval.json
    python scripts/toy_model_card.py out/toy-eval.json --model weights/toy-world
    concept-edit toyworld evaluate --model weights/toy-mmdit --seeds 64 --max-prompts 64 --out out/mm-eval.json
    python scripts/toy_model_card.py out/mm-eval.json --model weights/toy-mmdit --t-uniform 0.5 --extra F.md
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
from PIL import Image

UNET_HEAD = """---
library_name: diffusers
pipeline_tag: text-to-image
tags: [toy, concept-editing, cpu]
---
# toy-world v1: the embedded default of concept_edit

A tiny latent text-to-image model (StableDiffusionPipeline) trained from scratch on the toy
world (one shape on a background, 64x64; spec in `docs/toy-world.md`), so that erasure, sliders,
discovery and audits are numbers on a CPU. Loads with plain diffusers, offline:

```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("weights/toy-world")
image = pipe("a large red circle on a striped background", num_inference_steps=25,
             guidance_scale=5.0).images[0]
```

Default sampler (also in `concept_edit.json`): DDIM, 25 steps, guidance 5, 64x64.

![samples](samples.png)

Rows: the prompts below; columns: seeds 0..7.
{rows}

## Components
| component | architecture | parameters |
|---|---|---|
| vae | AutoencoderKL 64x64x3 -> 16x16x4, block_out (16, 32, 64), no attention | {vae} |
| text_encoder | CLIPTextModel, 2 layers x 96 wide, the real CLIP BPE tokenizer (49,408 tokens, built offline) | {te} |
| unet | UNet2DConditionModel, block_out (32, 64, 64), cross-attention at 16x16, 8x8 and mid | {unet} |
| scheduler | DDIMScheduler, scaled-linear betas 0.00085..0.012, epsilon | - |

Size on disk: {size_mb:.1f} MB (safetensors only).

## How it was trained (reproduce)

```bash
concept-edit toyworld train --work .cache/toyworld --out weights/toy-world
```
Seeded (seed 0), resumable (rerun the same command after an interruption: every stage
checkpoints into `--work` and batches come from (seed, step)). Stages: 100,000 renders;
VAE 2,500 steps on 32x32 crops (L1 + MSE, shape pixels weighted x4, KL 1e-6); latents
(scaling factor 1/std = {scale:.4f}); attribute classifier 2,000 steps on renders and their VAE
reconstructions; text encoder + UNet jointly, 6,000 steps, batch 64, AdamW 1e-3 (warm-up 300,
cosine), min-SNR-5 epsilon loss, 10% empty captions (grammar dropout 0.2 per attribute),
EMA 0.999 exported. Wall time on a 2-core CPU machine (other work running at times): {train_time}.

"""

MMDIT_HEAD = """---
library_name: diffusers
pipeline_tag: text-to-image
tags: [toy, concept-editing, cpu, sd3, mmdit, flow-matching]
---
# toy-mmdit: the toy world on an SD3-style MMDiT

The second embedded model of concept_edit: the same toy world (one shape on a background, 64x64;
spec in `docs/toy-world.md`) learnt by a tiny `StableDiffusion3Pipeline` (MMDiT, rectified flow),
so that every method is measured on a DiT as well as on the UNet of `weights/toy-world`. Loads
with plain diffusers, offline (no T5: pass it as None, as for any SD3 without T5):

```python
from diffusers import StableDiffusion3Pipeline
pipe = StableDiffusion3Pipeline.from_pretrained("weights/toy-mmdit", text_encoder_3=None, tokenizer_3=None)
image = pipe("a large red circle on a striped background", num_inference_steps=25,
             guidance_scale=2.0).images[0]
```

Default sampler (also in `concept_edit.json`): FlowMatchEuler (shift {shift}), 25 steps, guidance {guidance:g},
{interval}64x64 (see "Guidance" below). Plain `pipe(...)` guides every step; concept_edit's
sampler (`concept_edit.sample(pipe, prompt)`, `concept-edit generate`, every measurement) reads
the whole default from `concept_edit.json`.

![samples](samples.png)

Rows: the prompts below; columns: seeds 0..7.
{rows}

## Components
| component | architecture | parameters |
|---|---|---|
| vae | the toy world's AutoencoderKL (same weights), with SD3's shift_factor {vae_shift:.4f} and scaling_factor {scale:.4f} | {vae} |
| text_encoder | CLIPTextModelWithProjection, 3 layers x 64 wide, the real CLIP BPE tokenizer | {te} |
| text_encoder_2 | CLIPTextModelWithProjection, 3 layers x 32 wide, tokenizer padding with '!' (as SD3's) | {te2} |
| transformer | SD3Transformer2DModel, patch 2 (64 image tokens), {layers} joint blocks, width {width} (heads of 32), joint text width 96 | {unet} |
| text_encoder_3 | none: the pipeline fills the T5 stream with 256 zero tokens | - |
| scheduler | FlowMatchEulerDiscreteScheduler, shift {shift} | - |

Size on disk: {size_mb:.1f} MB (safetensors only; the tokenizers carry vocab.json + merges.txt).

## How it was trained (reproduce)

```bash
concept-edit toyworld train --config configs/toyworld/mmdit.yaml
```
Seeded (seed 0), resumable (rerun the same command after an interruption; batches come from
(seed, step)). 60,000 renders encoded by the toy world's VAE (latents shifted by their mean and
scaled to unit std); both text encoders and the MMDiT trained jointly from scratch by rectified
flow (x_s = (1 - s) x0 + s e, target e - x0, s {noise_levels}, timestep 1000 s),
{steps:,} steps, batch 64, AdamW 6e-4 (warm-up 300, cosine), EMA 0.999 exported; caption
dropout: size 0.2, **colour 0.4**, background 0.2 per caption, 10% empty captions. Colour is
dropped twice as often as on the UNet, whose partial prompts lean to some colours when colour is
unnamed. Training carries one zero T5 token with ln 256 added to its attention logit instead of
256 zero tokens: the same function as the plain pipeline's (tested), 142 tokens instead of 397. Wall time on
a 2-core CPU machine: {train_time}.

"""

CARD_TAIL = """## What it measures (`concept-edit toyworld evaluate --seeds 64`)

{n_prompts} of the v1 grammar's {grammar_n} prompts ({subset}), {seeds} seeds each (fresh seeds
from 10,000), default sampler, scored by `weights/toy-classifier`. Reproduce:
`{command}`

| check | shape | colour | size | background | radius MAE (px) |
|---|---|---|---|---|---|
| classifier on fresh renders | {cr[shape]:.3f} | {cr[colour]:.3f} | {cr[size]:.3f} | {cr[background]:.3f} | {cr[radius_mae_px]:.2f} |
| classifier on VAE reconstructions (the VAE's ceiling) | {cv[shape]:.3f} | {cv[colour]:.3f} | {cv[size]:.3f} | {cv[background]:.3f} | {cv[radius_mae_px]:.2f} |
| full prompts ({full_n}): prompted attribute shown | {fu[shape]:.3f} | {fu[colour]:.3f} | {fu[size]:.3f} | {fu[background]:.3f} | |
| partial prompts ({part_n}): named attributes shown | {pa[shape]:.3f} | {pa_colour} | {pa_size} | {pa_background} | |

Targets: classifier >= 0.99 per attribute and radius error < 1.5 px; full prompts colour >= 0.90,
background >= 0.95, size >= 0.90, shape >= 0.85; partial prompts the same for named attributes.

Variety of unnamed attributes in partial prompts (share of the least common value; target: every
value >= 10% of samples):

| attribute | mean over prompts | worst prompt | prompts below 10% |
|---|---|---|---|
{variety_rows}

Samples with no recognisable shape: {none_full:.3f} (full prompts), {none_part:.3f} (partial).

Speed: {speed[images]} images at {speed[steps]} steps in {speed[seconds]:.2f} s on this 2-core CPU
({speed[threads]} torch threads; target <= 10 s).
"""

PROMPTS = ["a large red circle on a plain background", "a small blue square on a striped background",
           "a yellow star on a dotted background", "a green triangle", "a circle", "a large star"]


def _timesteps(pipe, steps: int) -> list:
    pipe.scheduler.set_timesteps(steps)
    return list(pipe.scheduler.timesteps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("eval_json")
    ap.add_argument("--model", default="weights/toy-world")
    ap.add_argument("--train-time", default="see the model card history")
    ap.add_argument("--steps", type=int, default=6000, help="denoiser steps trained (MMDiT card)")
    ap.add_argument("--extra", help="a markdown file appended to the card (measured findings)")
    ap.add_argument("--t-uniform", type=float, default=0.0, help="the recipe's t_uniform (MMDiT card)")
    a = ap.parse_args()
    for f, what in ((a.eval_json, "the evaluate JSON (concept-edit toyworld evaluate ... --out eval.json)"),
                    (a.extra, "--extra: the markdown file to append")):
        if f and not os.path.isfile(f):
            raise SystemExit(f"error: {f} not found; give {what}")
    if not os.path.isdir(a.model):
        raise SystemExit(f"error: model directory {a.model} not found; pass --model weights/toy-world or weights/toy-mmdit")
    rep = json.load(open(a.eval_json))
    extra = open(a.extra).read() if a.extra else ""
    from concept_edit import SampleSettings, generate, load_pipeline

    pipe = load_pipeline(a.model)
    mmdit = hasattr(pipe, "transformer")
    rows = [generate(pipe, SampleSettings(prompt=p, n=8, seed=0), progress=False) for p in PROMPTS]
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    from concept_edit.core.io import atomic_path, atomic_write_text

    with atomic_path(os.path.join(a.model, "samples.png")) as tmp:
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(tmp)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(a.model) for f in fs
               if f.endswith(".safetensors"))
    pa = rep["partial"]["named_attribute_rates"]
    var = rep["partial"].get("unnamed_variety", {})
    vrows = "\n".join(f"| {k} | {v['mean_min_share']:.3f} | {v['worst_min_share']:.3f} | {v['prompts_below_10pct']} |"
                      for k, v in var.items())
    n_eval = len(rep["per_prompt"])
    n_grammar = rep.get("grammar_prompts", n_eval)
    subset = "all of them" if n_eval == n_grammar else (
        "a seeded subset stratified by how many attributes a prompt names; all 240 x 64 seeds "
        "takes about 70 min on 2 cores")
    command = (f"concept-edit toyworld evaluate {'--model ' + a.model + ' ' if mmdit else ''}--seeds {rep['seeds_per_prompt']} "
               + ("" if n_eval == n_grammar else f"--max-prompts {rep.get('max_prompts') or n_eval} ") + "--out eval.json")
    below = rep["sampler"].get("guidance_below", 1.0)
    interval = (f"unguided above {below:g} of the noise range (a guidance interval: the first "
                f"{sum(float(t) > below * pipe.scheduler.config.num_train_timesteps for t in _timesteps(pipe, rep['sampler']['steps']))} of "
                f"{rep['sampler']['steps']} steps), ") if below < 1 else ""
    noise_levels = (f"logit-normal(0, 1) as SD3 for {1 - a.t_uniform:g} of the batch, uniform on [0, 1] for "
                    f"{a.t_uniform:g}" if a.t_uniform else "logit-normal(0, 1) as SD3")
    head = (MMDIT_HEAD if mmdit else UNET_HEAD).format(
        rows="\n".join(f"{i + 1}. `{p}`" for i, p in enumerate(PROMPTS)),
        vae=f"{n(pipe.vae):,}", te=f"{n(pipe.text_encoder):,}",
        te2=f"{n(pipe.text_encoder_2):,}" if mmdit else "", unet=f"{n(pipe.transformer if mmdit else pipe.unet):,}",
        size_mb=size / 2 ** 20, scale=pipe.vae.config.scaling_factor, train_time=a.train_time,
        vae_shift=pipe.vae.config.get("shift_factor") or 0.0, shift=pipe.scheduler.config.get("shift", 1.0),
        layers=pipe.transformer.config.num_layers if mmdit else 0, steps=a.steps,
        guidance=rep["sampler"]["guidance"], interval=interval, noise_levels=noise_levels,
        width=pipe.transformer.config.num_attention_heads * 32 if mmdit else 0)
    text = head + CARD_TAIL.format(
        n_prompts=n_eval, grammar_n=n_grammar, subset=subset, command=command, seeds=rep["seeds_per_prompt"], cr=rep["classifier_renders"],
        cv=rep["classifier_vae_recon"], fu=rep["full"]["named_attribute_rates"],
        full_n=rep["full"]["prompts"], part_n=rep["partial"]["prompts"], pa=pa,
        pa_colour=f"{pa.get('colour', float('nan')):.3f}", pa_size=f"{pa.get('size', float('nan')):.3f}",
        pa_background=f"{pa.get('background', float('nan')):.3f}", variety_rows=vrows,
        none_full=rep["full"]["none_rate"], none_part=rep["partial"]["none_rate"], speed=rep["speed"])
    if extra:
        text += "\n" + extra
    atomic_write_text(os.path.join(a.model, "README.md"), text)
    print(f"wrote {a.model}/README.md and samples.png")


if __name__ == "__main__":
    main()
