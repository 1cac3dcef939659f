"""After an erasure on the CLI: a short check of what the edit removed.

Example::

    >>> from concept_edit.cli.erasure_check import erasure_check
    >>> erasure_check(model, "out/esd.safetensors", ["circle"])   # prints before -> after

(The model's recommended method settings, which the erasure commands start from, are read by
``cli.common.config_with_recommended``.)

The check generates a few seeds of prompts naming each erased concept, without and with the
edit, and scores them with the toy classifier: on the toy world only (other models need a
scorer the project cannot assume, and the check says so in one line).
"""
from __future__ import annotations

import numpy as np

CHECK_SEEDS = 8
WARN_AT = 0.15                    # the concept still shown this often after the edit: a warning


def toy_concepts(texts: list[str], guides: list[str] | None = None) -> list[tuple[str, str]]:
    """The toy-grammar values a list of edited texts erases. With ``guides`` (UCE: one per text):
    the values a text names that its guide does not ("a red circle" -> "a blue circle": red).
    Without: the values every text names, else every value named anywhere."""
    from ..toyworld.classifier import VOCAB

    def named(text):
        words = str(text).lower().split()
        return {(axis, v) for axis, values in VOCAB.items() for v in values if v != "none" and v in words}

    order = [(a, v) for a, values in VOCAB.items() for v in values]
    if guides is not None and len(guides) == len(texts):
        moved = set().union(*(named(t) - named(g.split("|")[0]) for t, g in zip(texts, guides)))
        return [x for x in order if x in moved]
    sets = [named(t) for t in texts]
    common = set.intersection(*sets) if sets else set()
    return [x for x in order if x in common] or [x for x in order if any(x in s for s in sets)]


def is_toy_world(model) -> bool:
    return getattr(model, "source", "") == "concept_edit:toy-world"


def erasure_check(model, artifact: str, concepts: list[str], seeds: int = CHECK_SEEDS, out=print,
                  guides: list[str] | None = None) -> dict:
    """Print the rate at which each erased concept is shown before -> after on ``seeds`` seeds
    of two prompts naming it; warn when it is still shown more than ``WARN_AT`` of the time.
    Returns {concept: (before, after)} (empty when no scorer applies)."""
    if not is_toy_world(model):
        out("check: no scorer for this model (the toy classifier knows only the toy world); "
            "measure the erasure with your own prompts, e.g. concept-edit generate --apply FILE")
        return {}
    from ..eval.toy import applied, concept_prompts, score
    from ..toyworld.classifier import load_classifier

    found = toy_concepts(concepts, guides)
    if not found:
        out(f"check: {', '.join(concepts)} names no toy-world value; nothing to score")
        return {}
    clf = load_classifier()
    res = {}
    for axis, value in found:
        target, _ = concept_prompts({axis: value}, n_target=2, n_other=0)
        before = score(model.pipe, target, seeds, clf, seed0=70_000)
        with applied(model.pipe, [artifact]):
            after = score(model.pipe, target, seeds, clf, seed0=70_000)
        rate = lambda groups: float(np.mean([q[axis] == value for g in groups for q in g]))  # noqa: E731
        b, a = rate(before), rate(after)
        res[value] = (b, a)
        prompts = "; ".join(p["prompt"] for p in target)
        out(f"check ({seeds} seeds of '{prompts}', toy classifier): {value} shown {b:.2f} -> {a:.2f}")
        if a > WARN_AT:
            out(f"warning: {value} is still shown {a:.0%} of the time after the edit; see docs/esd.md and "
                f"docs/uce.md for settings that erase it on the toy world")
    return res
