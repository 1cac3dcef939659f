"""What the prompt itself can do: a ceiling for sliders on the toy world.

Example::

    >>> from concept_edit.core.loading import load_pipeline
    >>> from concept_edit.eval.prompt_oracle import purity_oracle, size_oracle
    >>> pipe = load_pipeline("weights/toy-turbo")
    >>> rows = purity_oracle(pipe, "a square", steps=[0, 1], seeds=32)
    >>> rows[0]["purity"], rows[0]["changes"]          # 'a red square' from step 0, on the same seeds
    >>> size_oracle(load_pipeline("weights/toy-mmdit"), step=8, seeds=64)["worst_same_as_scale0"]

A slider changes what the model reads; the strongest change of that kind is the prompt naming
the attribute. ``purity_oracle`` samples the bare prompt, then the same seeds with the prompt
switched to a version naming one unnamed attribute (colour, size or background) from step k
on (the first k steps keep the bare prompt, as a slider with ``start`` = k / steps), and scores
the switch with SliderSpace's measure (``eval.sliderspace_report``: the share of changes, over
colour, size, background and position, that fall in the named family). ``size_oracle`` does the
same for the size slider's protocol (``eval.toy.slider_metrics``): each slider prompt switched
to its "small" version stands for scale -2 and its "large" version for +2. Switching to the
unchanged prompt at any step reproduces the bare samples exactly (tested).
"""
from __future__ import annotations

import numpy as np

from ..core.null_tokens import null_token_shortcut
from ..core.sampler import sample
from ..toyworld.captions import caption, parse
from ..toyworld.classifier import load_classifier, predict
from .probes._base import to_uint8 as _u8
from .sliderspace_report import FAMILIES, SEED0, changed, describe
from .toy import SLIDER_PROMPTS, slider_metrics

VARIANTS = {"colour": ("red", "blue"), "size": ("small", "large"), "background": ("striped", "plain")}


def named(prompt: str, **attrs) -> str:
    """``prompt`` (a v1 toy-world prompt) with more attributes named: named("a square", colour="red")."""
    a = {**parse(prompt), **attrs}
    return caption(a["shape"], a.get("colour"), a.get("size"), a.get("background"))


def switched(pipe, base, prompt: str, seeds: list[int], step: int, **kw) -> np.ndarray:
    """uint8 images of ``prompt`` on ``seeds`` continuing ``base`` (a ``sample(...,
    return_states=True)`` result on the same seeds and ``kw``) from before ``step``; step 0
    samples ``prompt`` from the noise. ``kw``: more ``core.sampler.sample`` arguments (steps)."""
    if not 0 <= step < len(base.states):
        raise ValueError(f"switch step {step} is outside the run's steps 0..{len(base.states) - 1}; "
                         "give a step of the sampling schedule (e.g. --steps 0 1 2 for a 4-step model)")
    if step == 0:
        return _u8(sample(pipe, [prompt] * len(seeds), seed=seeds, **kw).images)
    return _u8(sample(pipe, [prompt] * len(seeds), seed=seeds, start_latents=base.states[step],
                      start_step=step, **kw).images)


def purity_oracle(pipe, prompt: str = "a square", steps=(0,), seeds: int = 32, seed0: int = SEED0,
                  variants: dict | None = None, clf=None) -> list[dict]:
    """One row per (step, named variant): changes per family against the bare prompt's images on
    the same seeds, and the purity of the named family."""
    with null_token_shortcut(pipe):   # exact; SD3 without T5 ~3x faster
        return _purity(pipe, prompt, steps, seeds, seed0, variants, clf)


def _purity(pipe, prompt, steps, seeds, seed0, variants, clf) -> list[dict]:
    clf = clf or load_classifier()
    seed_list = list(range(seed0, seed0 + seeds))
    base = sample(pipe, [prompt] * seeds, seed=seed_list, return_states=True)
    bdesc = describe(_u8(base.images), clf)
    given = parse(prompt)
    rows = []
    for k in steps:
        for fam, values in (variants or VARIANTS).items():
            if fam in given:
                continue
            for v in values:
                p = named(prompt, **{fam: v})
                desc = describe(switched(pipe, base, p, seed_list, k), clf)
                ch = {f: 0 for f in FAMILIES}
                for b, d in zip(bdesc, desc):
                    for f, c in changed(b, d).items():
                        ch[f] += int(c)
                total = sum(ch.values())
                rows.append({"step": k, "family": fam, "prompt": p, "changes": ch,
                             "purity": round(ch[fam] / total, 4) if total else None})
    return rows


def size_oracle(pipe, step: int = 0, seeds: int = 64, seed0: int = 50_000, prompts=SLIDER_PROMPTS,
                clf=None) -> dict:
    """The size slider's measures (ratio of mean radii, shape / colour / background kept) for the
    prompts' "small" (-2) and "large" (+2) versions from ``step`` on; per prompt, shape kept."""
    with null_token_shortcut(pipe):
        return _size(pipe, step, seeds, seed0, prompts, clf)


def _size(pipe, step, seeds, seed0, prompts, clf) -> dict:
    clf = clf or load_classifier()
    seed_list = list(range(seed0, seed0 + seeds))
    preds = {-2.0: [], 0.0: [], 2.0: []}
    per_prompt = {}
    for p in prompts:
        base = sample(pipe, [p] * seeds, seed=seed_list, return_states=True)
        zero = predict(clf, _u8(base.images))
        preds[0.0] += zero
        kept = {}
        for s, size in ((-2.0, "small"), (2.0, "large")):
            got = predict(clf, switched(pipe, base, named(p, size=size), seed_list, step))
            preds[s] += got
            kept[size] = round(float(np.mean([q["shape"] == z["shape"] for q, z in zip(got, zero)])), 4)
        per_prompt[p] = kept
    rep = slider_metrics(preds, [-2.0, 0.0, 2.0])
    rep.update({"step": step, "seeds": seeds, "seed0": seed0, "prompts": list(prompts),
                "shape_kept_per_prompt": per_prompt})
    return rep
