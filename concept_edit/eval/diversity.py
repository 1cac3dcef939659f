"""Diversity of a set of images: attribute entropy and value shares, position spread, mean pairwise
embedding distance and the Vendi score.

Example::

    >>> from concept_edit.eval.diversity import diversity_report, vendi_score, entropy
    >>> rep = diversity_report(images)                 # toy classifier + toy CLIP (the toy world)
    >>> rep["entropy"]["colour"], rep["shares"]["colour"], rep["vendi"], rep["encoder"]
    >>> rep = diversity_report(images, embed=my_open_clip_embed, encoder="ViT-B-32/laion2b_s34b_b79k",
    ...                        labels=None)            # real models: any open_clip encoder
    >>> vendi_score(torch.eye(3))                      # 3.0: three orthogonal embeddings

Definitions (all on a set of N images):

- entropy: Shannon entropy in bits of the label distribution of each attribute (toy classifier
  labels: shape, colour, size, background); ``shares``: the fraction of each value.
- position spread: the centroid of each image's non-background pixels (pixels whose colour
  differs from the median border colour by more than ``thresh``; the toy backgrounds are plain,
  striped or dotted, so stripes and dots can count: compare sets scored the same way), then the
  root of the summed variance of the centroids in x and y, in units of the image side.
- mean pairwise distance: mean of ``1 - cos`` over the N (N - 1) / 2 pairs of embeddings.
- Vendi score (Friedman & Dieng 2023): exp of the entropy of the eigenvalues of K / N, with K the
  cosine-similarity matrix: 1 for identical embeddings, k for k orthogonal ones.

Every report records the encoder and the library versions (torch, open_clip, numpy) it used.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Callable

import numpy as np
import torch

__all__ = ["entropy", "shares", "attribute_diversity", "centroids", "position_spread",
           "mean_pairwise_distance", "vendi_score", "diversity_report", "versions", "load_folder"]


def entropy(values) -> float:
    """Shannon entropy in bits of a list of labels (0 for one value, log2 k for k equal groups)."""
    c = Counter(values)
    n = sum(c.values())
    if not n:
        return 0.0
    return float(-sum((v / n) * math.log2(v / n) for v in c.values()))


def shares(values) -> dict:
    """{value: fraction}, most common first."""
    c = Counter(values)
    n = sum(c.values()) or 1
    return {k: round(v / n, 4) for k, v in c.most_common()}


def attribute_diversity(labels: list[dict], attributes=None) -> tuple[dict, dict]:
    """(entropy per attribute, value shares per attribute) of per-image label dicts."""
    if not labels:
        return {}, {}
    attributes = attributes or [k for k, v in labels[0].items() if isinstance(v, str)]
    ent = {a: round(entropy([l[a] for l in labels]), 4) for a in attributes}
    sh = {a: shares([l[a] for l in labels]) for a in attributes}
    return ent, sh


def centroids(images: np.ndarray, thresh: float = 40.0) -> np.ndarray:
    """(N, 2) centroid (x, y) in [0, 1] of each image's non-background pixels (see the module
    docstring); the image centre when no pixel differs from the background."""
    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim != 4 or imgs.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images, got shape {imgs.shape}")
    if imgs.max() <= 1.0:
        imgs = imgs * 255.0
    n, h, w, _ = imgs.shape
    border = np.concatenate([imgs[:, 0], imgs[:, -1], imgs[:, :, 0], imgs[:, :, -1]], axis=1)
    bg = np.median(border, axis=1)                                   # (N, 3)
    fg = np.linalg.norm(imgs - bg[:, None, None, :], axis=-1) > thresh  # (N, H, W)
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    out = np.full((n, 2), 0.5, dtype=np.float64)
    for i in range(n):
        m = fg[i]
        if m.any():
            out[i] = (xs[None, :] * m).sum() / m.sum(), (ys[:, None] * m).sum() / m.sum()
    return out


def position_spread(points: np.ndarray) -> float:
    """sqrt(var x + var y) of (N, 2) positions (0 when every image puts its shape at one place)."""
    p = np.asarray(points, dtype=np.float64)
    return float(np.sqrt(p.var(axis=0).sum())) if len(p) else 0.0


def _unit(emb) -> torch.Tensor:
    e = torch.as_tensor(np.asarray(emb) if not isinstance(emb, torch.Tensor) else emb).double()
    if e.ndim != 2:
        raise ValueError(f"expected (N, D) embeddings, got shape {tuple(e.shape)}")
    return e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)


def mean_pairwise_distance(emb) -> float:
    """Mean cosine distance ``1 - cos`` over all pairs (0 for identical embeddings)."""
    e = _unit(emb)
    n = len(e)
    if n < 2:
        return 0.0
    sim = e @ e.T
    iu = torch.triu_indices(n, n, 1)
    return float((1 - sim[iu[0], iu[1]]).mean())


def vendi_score(emb) -> float:
    """exp(-sum l log l) of the eigenvalues l of K / N, K the cosine-similarity matrix."""
    e = _unit(emb)
    n = len(e)
    if n == 0:
        return 0.0
    lam = torch.linalg.eigvalsh(e @ e.T / n).clamp_min(0)
    lam = lam[lam > 1e-12]
    return float(torch.exp(-(lam * lam.log()).sum()))


def versions() -> dict:
    out = {"numpy": np.__version__, "torch": torch.__version__}
    try:
        import open_clip

        out["open_clip"] = getattr(open_clip, "__version__", "unknown")
    except ImportError:
        out["open_clip"] = None
    return out


def _toy_labels(images: np.ndarray) -> list[dict]:
    from ..toyworld.classifier import load_classifier, predict

    return predict(load_classifier(), images)


def _toy_embed(images: np.ndarray) -> torch.Tensor:
    from ..toyworld.clip import embed_images

    return embed_images(images)


def diversity_report(images: np.ndarray, labels: list[dict] | None | str = "toy",
                     embed: Callable | None | str = "toy", encoder: str | None = None,
                     attributes=("shape", "colour", "size", "background")) -> dict:
    """All metrics of a set of uint8 (N, H, W, 3) images. ``labels``: per-image label dicts,
    ``"toy"`` (the toy classifier) or None (no attribute metrics); ``embed``: a callable images ->
    (N, D) embeddings (e.g. an open_clip model's ``encode_image`` wrapped), ``"toy"`` (the toy
    CLIP) or None; ``encoder`` names it in the report."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    rep: dict = {"n": int(len(images)), "versions": versions()}
    if isinstance(labels, str):
        labels = _toy_labels(images) if labels == "toy" else None
        rep["classifier"] = "toy-classifier"
    if labels is not None:
        attrs = [a for a in attributes if a in labels[0]] if labels else []
        rep["entropy"], rep["shares"] = attribute_diversity(labels, attrs)
        if labels and all("cx" in l and "cy" in l for l in labels):
            rep["position_spread_classifier"] = round(position_spread([[l["cx"], l["cy"]] for l in labels]), 4)
    rep["position_spread"] = round(position_spread(centroids(images)), 4)
    if isinstance(embed, str):
        if embed != "toy":
            raise ValueError(f"embed={embed!r}: pass 'toy', None or a callable images -> embeddings")
        embed, encoder = _toy_embed, encoder or "toy-clip (weights/toy-clip, open_clip)"
    if embed is not None:
        e = embed(images)
        rep["encoder"] = encoder or getattr(embed, "__name__", "custom")
        rep["pairwise_distance"] = round(mean_pairwise_distance(e), 4)
        rep["vendi"] = round(vendi_score(e), 4)
    return rep


def load_folder(path: str) -> np.ndarray:
    """uint8 (N, H, W, 3) of the PNG/JPEG files of a folder (sorted by name)."""
    import os

    from PIL import Image

    files = sorted(f for f in os.listdir(path) if f.lower().endswith((".png", ".jpg", ".jpeg")))
    if not files:
        raise ValueError(f"{path} holds no .png/.jpg images")
    imgs = [np.asarray(Image.open(os.path.join(path, f)).convert("RGB")) for f in files]
    shapes = {im.shape for im in imgs}
    if len(shapes) > 1:
        raise ValueError(f"{path}: images of several sizes {sorted(shapes)}; one size per folder")
    return np.stack(imgs)
