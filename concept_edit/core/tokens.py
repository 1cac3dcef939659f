"""Where a prompt's tokens sit in the text sequence the denoiser reads (per family, as data).

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

from .families import detect_family

# family -> [(tokenizer attribute, offset of its segment in the sequence), ...]
SEGMENTS = {
    "sd1": [("tokenizer", 0)], "sd2": [("tokenizer", 0)], "sdxl": [("tokenizer", 0)],
    "sd3": [("tokenizer", 0), ("tokenizer_3", 77)], "flux": [("tokenizer_2", 0)],
    "pixart": [("tokenizer", 0)],
}


@dataclasses.dataclass
class Positions:
    last: list[int]                 # last word token of each segment
    trailing: list[int]             # EOS and padding after it, every segment
    prefix: list[int]               # tokens before the last word token (BOS, other words)
    segments: list[tuple[int, int, int]]  # (offset, length, last index within the segment)

    def all(self) -> list[int]:
        return sorted(self.prefix + self.last + self.trailing)


def token_positions(pipe, prompt: str, seq_len: int) -> Positions:
    fam = detect_family(pipe)
    segs = []
    for attr, offset in SEGMENTS[fam]:
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
