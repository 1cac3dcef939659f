"""UCE on the layer that reads the pooled text embedding (SD3/FLUX AdaLN input).

Example::

    >>> cfg = UceConfig(edit=["circle"], guide=["square|triangle|star"])   # pooled: true (default)
    >>> uce_edit(pipe, cfg)          # edits add_k/v_proj AND time_text_embed.text_embedder.linear_1

An MMDiT reads the prompt twice: token by token on the text stream (``add_k/v_proj``, the
``text_kv`` sites) and as one pooled CLIP vector that modulates every block (``pooled`` sites).
On the toy MMDiT the pooled vector alone decides the shape (a square's pooled vector with a
circle's tokens draws 64 squares of 64), so an edit of the text stream leaves the concept in
place. The pooled layer is edited by the same closed form, one row per prompt: each edit
prompt's pooled vector onto its guide prompts' (averaged, pushed by ``guide_eta``), every
preserved prompt's onto itself. Its input depends on the prompt only, so it is captured once.
"""
from __future__ import annotations

import torch

from ...core.families import resolve_sites


def pooled_rows(cfg, cap, edit_prompts, guide_prompts, keep_prompts, attr_prompts=(), alphas=None):
    """(C_e, T, C_p) for the pooled layer: one row per prompt (``cap``: a static InputCapture)."""
    uniq = list(dict.fromkeys(edit_prompts + [g for gs in guide_prompts for g in gs] + list(keep_prompts)
                              + [a for aps in attr_prompts for a in aps]))
    X = cap(uniq)["*"][:, 0]                 # (prompts, features): the pooled input, no token axis
    row = {p: X[i] for i, p in enumerate(uniq)}
    etas = cfg.etas()
    ce, tt = [], []
    for j, (p, gs) in enumerate(zip(edit_prompts, guide_prompts)):
        c = row[p]
        if alphas is not None:               # debias: move toward the attribute prompts
            a_of = (alphas or {}).get(cfg.edit[j // len(cfg.templates)], {})
            t = c + sum(a_of.get(a, 0.0) * (row[ap] - c) for a, ap in zip(cfg.attributes, attr_prompts[j]))
        else:
            t = torch.stack([row[g] for g in gs]).mean(0)
            t = t + etas[j // len(cfg.templates)] * (t - c)
        ce.append(c)
        tt.append(t)
    cp = torch.stack([row[q] for q in keep_prompts]) if keep_prompts else None
    return torch.stack(ce), torch.stack(tt), cp


def pooled_paths(pipe, cfg) -> list[str]:
    return resolve_sites(pipe, "pooled") if cfg.pooled else []

