"""An exact shortcut for pipelines whose text stream is padded with identical null tokens.

Example::

    >>> from concept_edit.core.null_tokens import null_token_shortcut
    >>> with null_token_shortcut(pipe):            # SD3 without T5: 78 text tokens, not 333
    ...     images = sample(pipe, ["a red circle"], seed=0).images   # same images, faster

SD3 loaded without T5 (``text_encoder_3=None``) feeds ``max_sequence_length`` (256) zero
tokens on the text stream. The text stream has no positions, so identical tokens stay identical
through every joint block; one of them with ``ln n`` added to its attention logit is the same
function (:class:`RepeatedTokenAttn`, tested against the plain pipeline). Inside the context the
pipeline's ``encode_prompt`` emits one null token (for our sampler and for a plain
``pipe(...)`` call alike) and the joint attention layers count it ``n`` times; outside, nothing
changes. Where a backbone declares no null stream, or its encoder is present,
the context does nothing. Hooks that read text-stream rows inside it see one null row, not ``n``:
methods that fit on those rows (UCE) run outside it.
"""
from __future__ import annotations

import contextlib
import functools
import math
import weakref

import torch
import torch.nn.functional as F

_ACTIVE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class RepeatedTokenAttn:
    """Joint attention where the last context token stands for ``n`` identical tokens.

    Example::

        >>> tr.set_attn_processor(RepeatedTokenAttn(256))   # context = CLIP tokens + 1 zero token
    """

    def __init__(self, n: int):
        self.log_n = math.log(n)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        b, n_img = hidden_states.shape[:2]

        def heads(x):
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        cq = heads(attn.add_q_proj(encoder_hidden_states))
        ck = heads(attn.add_k_proj(encoder_hidden_states))
        cv = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        bias = torch.zeros(k.shape[2], dtype=q.dtype, device=q.device)
        bias[-1] = self.log_n
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None])
        out = out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1])
        img, ctx = out[:, :n_img], out[:, n_img:]
        if not attn.context_pre_only:
            ctx = attn.to_add_out(ctx)
        return attn.to_out[1](attn.to_out[0](img)), ctx


@contextlib.contextmanager
def null_token_shortcut(pipe):
    """Within the block, encode one null token and count it ``n`` times (see module doc)."""
    from .backbones import backbone_of

    spec = backbone_of(pipe).null_stream          # (encoder attribute, tokens) or ()
    if not spec or getattr(pipe, spec[0], None) is not None or pipe in _ACTIVE:
        yield pipe
        return
    den = getattr(pipe, backbone_of(pipe).denoiser)
    joint = [m for m in den.modules() if getattr(m, "add_k_proj", None) is not None and hasattr(m, "processor")]
    saved = [m.processor for m in joint]
    try:
        for m in joint:
            m.set_processor(RepeatedTokenAttn(spec[1]))
        _ACTIVE[pipe] = True
        encode = pipe.encode_prompt
        pipe.encode_prompt = functools.partial(_one_null_token, encode)
        yield pipe
    finally:
        pipe.__dict__.pop("encode_prompt", None)
        _ACTIVE.pop(pipe, None)
        for m, p in zip(joint, saved):
            m.set_processor(p)


def _one_null_token(encode, *args, **kw):
    kw["max_sequence_length"] = 1
    return encode(*args, **kw)
