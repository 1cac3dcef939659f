"""The UCE closed form, factored once per distinct layer input.

Example::

    >>> sysm = UceSystem(C_e, T, C_p, lamb=0.5, s_e=1.0, s_p=1.0)   # rows are token embeddings
    >>> W_new = sysm.apply(W)                                        # for every layer reading them

For W (out x in), edit rows c_i with targets W t_i (t_i: guide embedding), preserve rows c_j:

    W_new = argmin  lam ||W' - W||^2 + s_e sum ||W' c_i - W t_i||^2 + s_p sum ||W' c_j - W c_j||^2
          = W N M^-1,   M = lam I + s_e C_e^T C_e + s_p C_p^T C_p,  N = M + s_e (T - C_e)^T C_e
          = W + (W D^T) B,   D = T - C_e,  B = s_e C_e M^-1

M and B depend only on the text rows, so one Cholesky factorisation (a solve, no inverse) serves
every layer that reads the same text; each layer then costs two thin matmuls (or one d x d
matmul when there are more edit rows than input features). All in fp32 (the reference's
explicit inverse is replaced by a Cholesky solve).
"""
from __future__ import annotations

import torch


class UceSystem:
    def __init__(self, C_e: torch.Tensor, T: torch.Tensor, C_p: torch.Tensor | None,
                 lamb: float = 0.5, s_e: float = 1.0, s_p: float = 1.0):
        C_e, T = C_e.float(), T.float()
        d = C_e.shape[1]
        if T.shape != C_e.shape:
            raise ValueError(f"edit rows {tuple(C_e.shape)} and targets {tuple(T.shape)} differ")
        M = lamb * torch.eye(d, dtype=torch.float32, device=C_e.device) + s_e * C_e.T @ C_e
        if C_p is not None and len(C_p):
            C_p = C_p.float()
            M = M + s_p * C_p.T @ C_p
        L, info = torch.linalg.cholesky_ex(M)
        rhs = s_e * C_e.T  # (d, n_e)
        if int(info) == 0:
            Bt = torch.cholesky_solve(rhs, L)           # M^-1 (s_e C_e^T), M symmetric
        else:  # singular (lam = 0 with too few rows): least-squares solve
            Bt = torch.linalg.lstsq(M, rhs).solution
        self.D = (T - C_e)                              # (n_e, d)
        self.B = Bt.T                                   # (n_e, d)
        self.dense = self.D.T @ self.B if C_e.shape[0] >= d else None  # (d, d) correction

    def delta(self, W: torch.Tensor) -> torch.Tensor:
        W = W.float()
        if self.dense is not None:
            return W @ self.dense
        return (W @ self.D.T) @ self.B

    def apply(self, W: torch.Tensor) -> torch.Tensor:
        """The edited weight, fp32."""
        return W.float() + self.delta(W)

    def apply_many(self, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """Edit several weights reading the same input in one stacked matmul."""
        sizes = [w.shape[0] for w in weights]
        stacked = torch.cat([w.float() for w in weights])
        return list(torch.split(stacked + self.delta(stacked), sizes))


def reference_solve(W, C_e, T, C_p, lamb=0.5, s_e=1.0, s_p=1.0):
    """Reference-style: python loop over rows, explicit inverse (for tests and benchmarks)."""
    W = W.double()
    d = W.shape[1]
    mat1 = lamb * W.clone()
    mat2 = lamb * torch.eye(d, dtype=torch.float64)
    for c, t in zip(C_e.double(), T.double()):
        mat1 += s_e * torch.outer(W @ t, c)
        mat2 += s_e * torch.outer(c, c)
    for c in (C_p.double() if C_p is not None else []):
        mat1 += s_p * torch.outer(W @ c, c)
        mat2 += s_p * torch.outer(c, c)
    return (mat1 @ torch.inverse(mat2)).float()
