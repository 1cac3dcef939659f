"""``toy[:CLASSIFIER_DIR]``: the toy-world attribute classifier as a scorer.

Example::

    >>> from concept_edit.scorers import get_scorer
    >>> score = get_scorer("toy", attributes=["red", "blue"])
    >>> score(images)                       # one label per image, on the colour axis
    ['red', 'blue', ...]
"""
from __future__ import annotations

from ..toyworld.classifier import VOCAB, load_classifier, predict


def toy_scorer(spec: str, attributes: list[str]):
    """Labels each image with its predicted value on the axis that holds every attribute."""
    axes = [k for k, vocab in VOCAB.items() if all(a in vocab for a in attributes)]
    if not axes:
        raise ValueError(f"the toy classifier knows no axis holding all of {attributes}; "
                         f"choose values of one of: {', '.join(f'{k}={list(v)}' for k, v in VOCAB.items())}")
    axis = axes[0]
    path = spec.split(":", 1)[1] if ":" in spec else None
    model = load_classifier(path)
    return lambda images: [p[axis] for p in predict(model, images)]
