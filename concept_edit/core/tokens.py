"""Where a prompt's tokens sit in the text sequence the denoiser reads (segments: backbone data).

Example::

    >>> from concept_edit.core.tokens import token_positions
    >>> pos = token_positions(pipe, "a red circle", seq_len=77)
    >>> pos.last, pos.trailing[:3]           # last word token, then EOS/pad positions
    ([3], [4, 5, 6])

Text sequences are concatenations of tokenizer segments: SD1/2/SDXL one CLIP segment (SDXL's
two encoders are concatenated along features, not positions), SD3 CLIP (77) then T5, FLUX and
PixArt T5 only. Each segment contributes its last word token and its trailing EOS/pad tokens.
"""
from __future__ import annotations

import dataclasses

from .backbones import backbone_of

@dataclasses.dataclass
class Positions:
    last: list[int]                 # last word token of each segment
    trailing: list[int]             # EOS and padding after it, every segment
    prefix: list[int]               # tokens before the last word token (BOS, other words)
    segments: list[tuple[int, int, int]]  # (offset, length, last index within the segment)

    def all(self) -> list[int]:
        return sorted(self.prefix + self.last + self.trailing)


def token_positions(pipe, prompt: str, seq_len: int) -> Positions:
    segs = []
    for attr, offset in backbone_of(pipe).segments:
        tok = getattr(pipe, attr, None)
        if tok is None or offset >= seq_len:
            continue
        segs.append((tok, offset))
    last, trailing, prefix, info = [], [], [], []
    for i, (tok, offset) in enumerate(segs):
        end = segs[i + 1][1] if i + 1 < len(segs) else seq_len
        length = end - offset
        enc = tok(prompt, padding="max_length", max_length=length, truncation=True)
        n = int(sum(enc["attention_mask"]))
        li = max(n - 2, 0)
        last.append(offset + li)
        trailing += list(range(offset + li + 1, end))
        prefix += list(range(offset, offset + li))
        info.append((offset, length, li))
    return Positions(last, trailing, prefix, info)


def diff_spans(pipe, prompt: str, other: str, seq_len: int) -> list[tuple[int, int, int, int, int]]:
    """Where two prompts differ, per segment: ``(offset, length, start, n_prompt, n_other)``.

    The differing span is what lies between the longest common prefix and suffix of the two
    token sequences, so a concept and its guide written in the same context ("a red circle" vs
    "a circle", "a {} on a striped background" with a word or '') are located exactly, in
    the middle of a prompt and with several tokens ("van gogh").
    """
    attrs = [(getattr(pipe, a, None), o) for a, o in backbone_of(pipe).segments]
    attrs = [(t, o) for t, o in attrs if t is not None and o < seq_len]
    out = []
    for i, (tok, offset) in enumerate(attrs):
        end = attrs[i + 1][1] if i + 1 < len(attrs) else seq_len
        length = end - offset
        a, b = (tok(" ".join(x.split()), truncation=True, max_length=length)["input_ids"] for x in (prompt, other))
        pre = 0
        while pre < min(len(a), len(b)) and a[pre] == b[pre]:
            pre += 1
        suf = 0
        while suf < min(len(a), len(b)) - pre and a[-1 - suf] == b[-1 - suf]:
            suf += 1
        n_a, n_b = len(a) - pre - suf, len(b) - pre - suf
        if n_a == 0:  # same text (or other is longer): the last word token maps onto itself
            pre, n_a, n_b = max(len(a) - 2, 0), 1, 1
        out.append((offset, length, min(pre, length - 1), n_a, n_b))
    return out
