"""Shared CLI pieces: model options, --size/--apply parsing, one-line errors."""
from __future__ import annotations

import argparse
import os
import re
import sys

ERRORS = ()  # filled lazily to avoid importing heavy modules at parse time


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): the message and where to look."""

    def error(self, message: str):
        print(f"concept-edit: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


class UsageError(ValueError):
    """Bad command-line input; the message says what to write instead."""


def add_model_args(p: argparse.ArgumentParser, model_default: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="hub id, diffusers directory or .safetensors file (default: the embedded "
                        "toy world, weights/toy-world)")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    g.add_argument("--device", default="cpu")
    g.add_argument("--attention", default="sdpa", choices=["sdpa", "xformers"])
    g.add_argument("--family", default=None, help="family of a single-file checkpoint")


def load_model(args, progress: bool = False):
    from ..core.loading import load_pipeline

    return load_pipeline(args.model, dtype=args.dtype, device=args.device, attention=args.attention,
                         family=args.family, progress=progress)


def parse_size(text: str | None, multiple: int = 8) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not m:
        raise UsageError(f"bad --size {text!r}: write HxW, e.g. --size 64x64")
    h = int(m.group(1))
    w = int(m.group(2) or h)
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise UsageError(f"bad --size {text!r}: height and width must be positive multiples of "
                         f"{multiple} for this model, e.g. --size {max(multiple, 64)}x{max(multiple, 64)}")
    return h, w


def parse_apply(text: str) -> tuple[str, float]:
    """``FILE[@SCALE]`` -> (file, scale)."""
    path, scale = text, 1.0
    if "@" in text:
        path, _, s = text.rpartition("@")
        try:
            scale = float(s)
        except ValueError:
            raise UsageError(f"bad --apply {text!r}: write FILE or FILE@SCALE, e.g. size.safetensors@2") from None
    if not os.path.isfile(path):
        raise UsageError(f"--apply {path!r}: no such file")
    return path, scale


def positive_int(name: str):
    def conv(v: str) -> int:
        try:
            i = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {v!r}") from None
        if i <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {v!r}")
        return i
    return conv


def split_list(text: str | None) -> list[str]:
    """'a; b ;c' -> ['a', 'b', 'c'] (lists on the command line are ';'-separated)."""
    if text is None:
        return []
    return [t.strip() for t in text.split(";") if t.strip()]


def fail(msg: str, code: int = 2) -> None:
    print(f"concept-edit: error: {msg}", file=sys.stderr)
    sys.exit(code)
