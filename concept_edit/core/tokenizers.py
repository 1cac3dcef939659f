"""Tokenizers built offline: the real CLIP BPE (from open_clip's package) and a small T5.

Example::

    >>> from concept_edit.core.tokenizers import clip_tokenizer
    >>> tok = clip_tokenizer()
    >>> tok("a photo of a cat").input_ids
    [49406, 320, 1125, 539, 320, 2368, 49407]

The CLIP vocabulary ships as ``bpe_simple_vocab_16e6.txt.gz`` inside open_clip_torch; we turn it
into transformers' ``vocab.json`` + ``merges.txt`` (the standard CLIP construction) and load
with ``from_pretrained`` (transformers 5 ignores ``vocab_file=`` keyword arguments).
"""
from __future__ import annotations

import functools
import gzip
import json
import os
import tempfile
from importlib import resources

N_MERGES = 48894
CLIP_MAX_LENGTH = 77
T5_WORDS = ("a an the of on in with and photo picture image painting style art cat dog person "
            "man woman red green blue yellow circle square triangle star small large plain striped "
            "dotted background shape object car tree house").split()


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe_path() -> str:
    try:
        return str(resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz")
    except ModuleNotFoundError as e:  # pragma: no cover - dependency is required
        raise RuntimeError("open_clip_torch is not installed; run `pip install open_clip_torch`") from e


def write_clip_tokenizer_files(out_dir: str, pad_token: str = "<|endoftext|>",
                               max_length: int = CLIP_MAX_LENGTH) -> str:
    """Write vocab.json, merges.txt and tokenizer configs for CLIPTokenizer into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with gzip.open(_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1:N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    cfg = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
           "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
           "unk_token": "<|endoftext|>", "pad_token": pad_token, "do_lower_case": True}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump({k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, f)
    return out_dir


@functools.lru_cache(maxsize=4)
def _clip_dir(pad_token: str, max_length: int) -> str:
    d = tempfile.mkdtemp(prefix="concept_edit_clip_tok_")
    return write_clip_tokenizer_files(d, pad_token, max_length)


def clip_tokenizer(pad_token: str = "<|endoftext|>", max_length: int = CLIP_MAX_LENGTH):
    """The real CLIP tokenizer, built offline. SDXL/SD3's second tokenizer pads with '!'."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(_clip_dir(pad_token, max_length),
                                         model_max_length=max_length)


def t5_tokenizer(max_length: int = 32):
    """A small Unigram T5 tokenizer over a fixed word list (runs the real T5 code path)."""
    from transformers import T5Tokenizer

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = [("\u2581" + w, -float(i + 1)) for i, w in enumerate(T5_WORDS)]
    chars = sorted({c for w in T5_WORDS for c in w})
    pieces += [(c, -100.0) for c in chars] + [("\u2581", -50.0)]
    tok = T5Tokenizer(vocab=specials + pieces, unk_id=2, extra_ids=0, model_max_length=max_length)
    return tok
