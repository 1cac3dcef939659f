"""Image embedders by spec: the toy CLIP (default) or any open_clip model from a local file.

Example::

    >>> from concept_edit.scorers import get_embedder
    >>> emb = get_embedder("toy-clip")                              # weights/toy-clip via open_clip
    >>> emb = get_embedder("ViT-B-32@/models/vit-b-32.safetensors")  # open_clip ARCH@WEIGHTS
    >>> f = emb.embed(images)                 # uint8 (N, H, W, 3) -> (N, D), L2-normalised
    >>> f = emb.embed_tensor(x)               # float (N, 3, H, W) in [-1, 1], differentiable
    >>> emb.spec, emb.fingerprint, emb.dim, emb.size

``embed`` runs ``embed_tensor`` without gradients, so PCA bases computed from ``embed`` and the
training losses that differentiate ``embed_tensor`` live in the same space. Images of another
size are resized (shortest side, antialiased bilinear) and centre-cropped to the encoder's input,
as open_clip's own preprocess does. ``check_spec`` validates a spec without importing torch (the
CLI calls it before any model loads): an unknown form, a missing file, a pickle or a safetensors
file that is not an open_clip state dict is one :class:`EmbedderError` line.
"""
from __future__ import annotations

import hashlib
import os

TOY = "toy-clip"
OPEN_CLIP_KEYS = ("visual.",)  # every open_clip CLIP state dict has its image tower under visual.*


class EmbedderError(ValueError):
    """A bad embedder spec or file; the message says what to pass instead."""


def _parse(spec: str) -> tuple[str, str, str]:
    """('toy', dir or '', '') or ('open_clip', arch, weights)."""
    spec = (spec or "").strip()
    if spec == TOY or spec.startswith(TOY + ":"):
        return "toy", spec.split(":", 1)[1] if ":" in spec else "", ""
    body = spec.split(":", 1)[1] if spec.startswith("clip:") else spec
    arch, at, weights = body.partition("@")
    if not at or not arch or not weights:
        raise EmbedderError(f"bad embedder {spec!r}: write 'toy-clip', 'toy-clip:DIR' or "
                            "ARCH@WEIGHTS.safetensors (an open_clip model), e.g. "
                            "ViT-B-32@/models/vit-b-32.safetensors")
    return "open_clip", arch, weights


def _header(path: str, what: str) -> dict:
    from ..core.io import ArtifactError, read_header

    try:
        return read_header(path, f"{what} {path}")[1]
    except ArtifactError as e:
        raise EmbedderError(str(e)) from None


def check_spec(spec: str) -> None:
    """Validate a spec (files included) without importing torch; EmbedderError if bad."""
    kind, a, b = _parse(spec)
    if kind == "toy":
        if a and not os.path.exists(os.path.join(a, "open_clip_config.json")):
            raise EmbedderError(f"embedder toy-clip:{a}: no toy CLIP there (missing open_clip_config.json)")
        return
    if not b.endswith(".safetensors"):
        raise EmbedderError(f"embedder weights {b}: pass open_clip weights as .safetensors (never pickles)")
    if not os.path.isfile(b):
        raise EmbedderError(f"embedder weights {b}: no such file")
    keys = [k for k in _header(b, "embedder weights") if k != "__metadata__"]
    if not any(k.startswith(OPEN_CLIP_KEYS) for k in keys) or not any("logit_scale" == k for k in keys):
        raise EmbedderError(f"embedder weights {b}: not an open_clip state dict (no 'visual.*' image tower "
                            "and 'logit_scale'); pass the open_clip model's safetensors file")


def _file_fingerprint(path: str) -> str:
    """sha256 of a file's size, header and three 1 MiB windows (fast on multi-GB weights)."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        for off in sorted({0, max(0, size // 2 - (1 << 19)), max(0, size - (1 << 20))}):
            f.seek(off)
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


class Embedder:
    """An open_clip image tower with its preprocessing as tensor ops."""

    def __init__(self, spec: str, model, fingerprint: str, device="cpu"):
        import torch

        self.spec, self.model, self.fingerprint = spec, model.eval(), fingerprint
        for p in self.model.parameters():
            p.requires_grad_(False)
        size = model.visual.image_size
        self.size = int(size[0] if isinstance(size, (tuple, list)) else size)
        pc = getattr(model.visual, "preprocess_cfg", None) or {}
        mean = pc.get("mean") or getattr(model.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = pc.get("std") or getattr(model.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device)
        self.device = device
        self.dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None \
            else int(self.embed_tensor(torch.zeros(1, 3, self.size, self.size)).shape[1])

    def to_input(self, x):
        """[-1, 1] (N, 3, H, W) -> the encoder's normalised input (resize + centre crop)."""
        import torch.nn.functional as F

        x = (x.float().to(self.device).clamp(-1, 1) + 1) / 2
        h, w = x.shape[-2:]
        s = self.size
        if (h, w) != (s, s):
            r = s / min(h, w)
            nh, nw = max(s, round(h * r)), max(s, round(w * r))
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[..., top:top + s, left:left + s]
        return (x - self.mean) / self.std

    def embed_tensor(self, x):
        """Differentiable L2-normalised embeddings of images in [-1, 1] (N, 3, H, W)."""
        import torch.nn.functional as F

        return F.normalize(self.model.encode_image(self.to_input(x)).float(), dim=-1)

    def embed(self, images, batch: int = 64, progress: bool = False):
        """L2-normalised embeddings (N, D) of uint8 (N, H, W, 3) images (no gradients)."""
        import numpy as np
        import torch
        from tqdm.auto import tqdm

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
        out = []
        with torch.no_grad():
            for i in tqdm(range(0, len(images), batch), desc="embed", disable=not progress, leave=False):
                x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).permute(0, 3, 1, 2)
                out.append(self.embed_tensor(x.float() / 127.5 - 1.0).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


def get_embedder(spec: str = TOY, device: str = "cpu") -> Embedder:
    """``toy-clip`` (``toy-clip:DIR``) or ``ARCH@WEIGHTS.safetensors`` -> :class:`Embedder`."""
    check_spec(spec)
    kind, a, b = _parse(spec)
    if kind == "toy":
        from ..toyworld.clip import DEFAULT_DIR, WEIGHTS_FILE, load_toy_clip

        d = a or DEFAULT_DIR
        model, _, _ = load_toy_clip(d or None, device=device)
        return Embedder(spec, model, _file_fingerprint(os.path.join(d, WEIGHTS_FILE)), device)
    import open_clip

    try:
        model, _, _ = open_clip.create_model_and_transforms(a, pretrained=b, device=device)
    except RuntimeError as e:  # shapes that do not fit the architecture
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise EmbedderError(f"embedder {spec}: open_clip cannot build {a!r} from these weights ({first})") from None
    return Embedder(spec, model, _file_fingerprint(b), device)
