"""PCA of image embeddings with a deterministic sign per component.

Example::

    >>> from concept_edit.methods.sliderspace.pca import pca
    >>> p = pca(embeddings, max_components=100)      # (N, D) -> dict of tensors
    >>> p["components"].shape, p["explained_variance_ratio"][:3]

Computed in float64 by SVD of the centred embeddings; each component's sign is fixed so that its
largest-magnitude coordinate is positive (SVD signs are otherwise arbitrary), so the same
embeddings give the same basis bit for bit. SliderSpace later flips a slider (not the basis) when
its + direction lowers the projection on the samples.
"""
from __future__ import annotations

import torch


def pca(embeddings: torch.Tensor, max_components: int = 100) -> dict[str, torch.Tensor]:
    """``mean`` (D), ``components`` (C, D) orthonormal rows, ``explained_variance`` (C),
    ``explained_variance_ratio`` (C), ``singular_values`` (C); C = min(max_components, N - 1, D)."""
    x = embeddings.detach().double().cpu()
    n, d = x.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 embeddings, got {n}")
    mean = x.mean(0)
    xc = x - mean
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    c = min(max_components, n - 1, d)
    vh, s = vh[:c], s[:c]
    idx = vh.abs().argmax(1)
    sign = torch.sign(vh[torch.arange(c), idx])
    sign[sign == 0] = 1
    vh = vh * sign[:, None]
    var = s ** 2 / (n - 1)
    total = xc.pow(2).sum() / (n - 1)
    return {"mean": mean.float(), "components": vh.float().contiguous(), "explained_variance": var.float(),
            "explained_variance_ratio": (var / total).float(), "singular_values": s.float()}


def project(embeddings: torch.Tensor, basis: dict[str, torch.Tensor]) -> torch.Tensor:
    """Coordinates (N, C) of embeddings in the basis (centred on its mean)."""
    return (embeddings.float() - basis["mean"]) @ basis["components"].T


def ica(embeddings: torch.Tensor, k: int, basis: dict[str, torch.Tensor] | None = None, seed: int = 0,
        iterations: int = 500, tol: float = 1e-7) -> dict[str, torch.Tensor]:
    """Independent directions inside the top-``k`` principal subspace (symmetric FastICA, logcosh,
    seeded start): unit ``components`` (k, D) in embedding space, ordered by the variance of the
    samples along them, each signed so that its largest coordinate is positive; ``explained_variance``
    / ``explained_variance_ratio`` are that variance (the directions are not orthogonal, so the
    ratios need not add up to the PCA's)."""
    x = embeddings.detach().double().cpu()
    basis = basis or pca(embeddings, k)
    if basis["components"].shape[0] < k:
        raise ValueError(f"ICA of {k} components needs {k} principal components, have {basis['components'].shape[0]}")
    pcs = basis["components"][:k].double()
    xc = x - basis["mean"].double()
    sd = basis["explained_variance"][:k].double().sqrt()
    z = (xc @ pcs.T) / sd                                   # whitened (N, k)
    g = torch.Generator().manual_seed(seed)
    w = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))[0]
    for _ in range(iterations):
        y = z @ w.T
        gy, dgy = torch.tanh(y), 1 - torch.tanh(y) ** 2
        w_new = (gy.T @ z) / len(z) - dgy.mean(0)[:, None] * w
        u, _, vh = torch.linalg.svd(w_new)                  # symmetric decorrelation
        w_new = u @ vh
        done = float((torch.abs(torch.einsum("ij,ij->i", w_new, w)) - 1).abs().max()) < tol
        w = w_new
        if done:
            break
    # unmixing rows w in whitened space -> directions in embedding space: d = w diag(1/sd) pcs
    dirs = (w / sd) @ pcs
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    var = ((xc @ dirs.T) ** 2).sum(0) / (len(x) - 1)
    order = torch.argsort(var, descending=True)
    dirs, var = dirs[order], var[order]
    idx = dirs.abs().argmax(1)
    sign = torch.sign(dirs[torch.arange(k), idx])
    sign[sign == 0] = 1
    dirs = dirs * sign[:, None]
    total = xc.pow(2).sum() / (len(x) - 1)
    return {"mean": basis["mean"], "components": dirs.float().contiguous(), "explained_variance": var.float(),
            "explained_variance_ratio": (var / total).float()}
