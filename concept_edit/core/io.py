"""Safetensors IO: atomic writes, metadata, fingerprints of base tensors.

Example::

    >>> from concept_edit.core.io import atomic_save_file, read_metadata
    >>> atomic_save_file({"w": torch.zeros(2)}, "out.safetensors", metadata={"concept_edit": "{}"})
    >>> read_metadata("out.safetensors")
    {'concept_edit': '{}'}

Never unpickles: weights load from safetensors only.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

META_KEY = "concept_edit"
FORMAT_VERSION = "1"


class ArtifactError(ValueError):
    """A file is not a concept_edit artifact, or not for this model."""


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yield a temp path next to ``path``; rename onto ``path`` only if the block succeeds."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix or os.path.splitext(path)[1], dir=d)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str, keep: tuple[str, ...] = ()):
    """Yield a temp directory beside ``path``; on success it replaces ``path``.

    Files named in ``keep`` that exist in the old ``path`` (e.g. a model card) are carried over
    unless the block wrote its own.
    """
    import shutil

    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path.rstrip("/")) + "-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        for name in keep:
            src, dst = os.path.join(path, name), os.path.join(tmp, name)
            if os.path.exists(src) and not os.path.exists(dst):
                shutil.copy2(src, dst)
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.rename(path, os.path.join(old, "x"))
        os.rename(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def atomic_save_file(tensors: dict[str, torch.Tensor], path: str, metadata: dict | None = None) -> None:
    """``safetensors.save_file`` through a temp file and rename (no half-written file)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path, ".safetensors") as tmp:
        save_file(tensors, tmp, metadata=meta)


def read_header(path: str, name: str | None = None) -> tuple[int, dict]:
    """(header length, header) of a safetensors file, read by hand: never unpickles, loads no
    tensor. ArtifactError in one line naming ``name`` (default: the path) for a pickle, a missing
    or unreadable file, or anything without a valid header. The one place every check reads a
    header: the header is read first, and a pickle is sniffed only when there is none (a real
    header length can start with byte 0x80, as a pickle does)."""
    name = name or path
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            raw = f.read(n) if 2 <= n <= min(size - 8, 100_000_000) else b""
    except FileNotFoundError:
        raise ArtifactError(f"{name}: no such file") from None
    except OSError as e:
        raise ArtifactError(f"{name}: cannot read it ({e.strerror or e})") from None
    if not raw.startswith(b"{"):
        if head[:2] == b"PK" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
            raise ArtifactError(f"{name} is a pickled checkpoint; concept_edit never unpickles: convert it "
                                "to .safetensors (safetensors.torch.save_file) and pass that")
        raise ArtifactError(f"{name} is not a safetensors file (" + ("too short" if len(head) < 8 else
                            "no valid header") + "); pass a .safetensors file")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        raise ArtifactError(f"{name} is not a safetensors file (its header is not a JSON object); pass a "
                            ".safetensors file")
    return n, header


def load_safetensors(path: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    read_header(path)
    try:
        return load_file(path, device=device)
    except Exception as e:  # safetensors raises its own error types
        raise ArtifactError(f"{path} is not a readable safetensors file ({e}); pass a .safetensors file") from e


def read_metadata(path: str) -> dict[str, str]:
    read_header(path)
    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise ArtifactError(f"{path} is not a readable safetensors file ({e}); pass a .safetensors file") from e


def read_artifact_meta(path: str) -> dict:
    """The concept_edit header of an artifact; ArtifactError if the file is not ours."""
    meta = read_metadata(path)
    if META_KEY not in meta:
        raise ArtifactError(f"{path} has no concept_edit metadata: it was not written by concept_edit "
                            "(load foreign LoRAs with diffusers' load_lora_weights instead)")
    try:
        out = json.loads(meta[META_KEY])
    except ValueError:
        out = None
    if not isinstance(out, dict):
        raise ArtifactError(f"{path}: its concept_edit metadata is not a JSON object (damaged or hand-edited "
                            "header); re-create the file with concept-edit")
    return out


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes and fp32 bytes of tensors (order independent), 16 hex chars."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().float().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
