"""The toy-world attribute classifier: load, predict, score against expectations.

Example::

    >>> from concept_edit.toyworld.classifier import load_classifier, predict
    >>> clf = load_classifier()                       # weights/toy-classifier
    >>> preds = predict(clf, images)                  # images: (N, 64, 64, 3) uint8
    >>> preds[0]
    {'shape': 'circle', 'colour': 'red', 'size': 'small', 'background': 'plain', 'radius': 10.3, ...}

``shape`` is 'none' when the image shows no shape (or the classifier is not confident about
the shape: max probability under ``min_confidence``).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..core.embedded import embedded_path
from ..core.io import atomic_save_file, load_safetensors
from .models import ToyClassifier
from .render import BACKGROUNDS, COLOUR_NAMES, SHAPES, SIZE_NAMES

VOCAB = {"shape": SHAPES + ("none",), "colour": COLOUR_NAMES, "size": SIZE_NAMES,
         "background": BACKGROUNDS}
DEFAULT_DIR = embedded_path("toy-classifier")  # a checkout's weights/, or the installed wheel's


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def save_classifier(model: ToyClassifier, out_dir: str, meta: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_save_file(sd, os.path.join(out_dir, "model.safetensors"),
                     metadata={"concept_edit": json.dumps(meta)})
    cfg = {"architecture": "ToyClassifier", "width": model.heads["shape"].in_features // 4,
           "vocab": VOCAB, **meta}
    tmp = os.path.join(out_dir, ".config.json.tmp")
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "config.json"))


def load_classifier(path: str | None = None) -> ToyClassifier:
    path = path or DEFAULT_DIR
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"no toy classifier at {path!r}; pass --classifier DIR or run "
                                "`concept-edit toyworld train` to build weights/toy-classifier")
    with open(cfg_path) as f:
        cfg = json.load(f)
    model = ToyClassifier(width=cfg["width"])
    model.load_state_dict(load_safetensors(os.path.join(path, "model.safetensors")))
    return model.eval()


@torch.inference_mode()
def predict_raw(model: ToyClassifier, images: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """Arrays of class probabilities and regressions for uint8 images."""
    outs: dict[str, list] = {}
    for i in range(0, len(images), batch):
        o = model(to_tensor(images[i:i + batch]))
        for k, v in o.items():
            v = v.softmax(-1) if k in VOCAB else v
            outs.setdefault(k, []).append(v.float().numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def predict(model: ToyClassifier, images: np.ndarray, min_confidence: float = 0.5) -> list[dict]:
    """One dict of labels per image; 'none' shape when no shape is seen confidently."""
    raw = predict_raw(model, images)
    out = []
    for i in range(len(images)):
        p = {k: VOCAB[k][int(raw[k][i].argmax())] for k in VOCAB}
        conf = float(raw["shape"][i].max())
        if conf < min_confidence:
            p["shape"] = "none"
        p["shape_confidence"] = round(conf, 4)
        for k in ("radius", "cx", "cy"):
            p[k] = round(float(raw[k][i]), 3)
        out.append(p)
    return out


def match_rates(preds: list[dict], expect: dict[str, str]) -> dict[str, float]:
    """Fraction of predictions whose attribute equals the expected value, per attribute."""
    for k, v in expect.items():
        if k not in VOCAB:
            raise ValueError(f"unknown attribute {k!r}; choose one of {', '.join(VOCAB)}")
        if v not in VOCAB[k]:
            raise ValueError(f"unknown {k} {v!r}; choose one of {', '.join(VOCAB[k])}")
    n = max(len(preds), 1)
    return {k: sum(p[k] == v for p in preds) / n for k, v in expect.items()}
