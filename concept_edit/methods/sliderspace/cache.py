"""The SliderSpace sample and embedding cache: a second run with other K or iterations (or fewer
samples) samples nothing.

Layout (``<root>/<prompt-slug>-<key>/``; the key hashes the model fingerprint, prompts, seed,
steps, guidance and size, not N: image i always comes from prompt i mod P and seed seed + i, so a
run asking for more samples extends the cache and one asking for fewer reads its head)::

    meta.json                         what the key hashes, in clear
    samples-00000.safetensors ...     chunks: latents (pipeline form), images uint8 (the sampled
                                      images; those over 256 px stored at 256 on the short side)
    embed-<embedder fp>.safetensors   L2-normalised embeddings of the first M images

Chunks are written atomically as they finish, so an interrupted sampling run resumes where it
stopped. The model fingerprint hashes every tensor's name, shape, dtype, 64 evenly spaced values
and sum (denoiser, VAE, text encoders): cheap on multi-GB models, and any retrained weights change it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time

import numpy as np
import torch
from torch import nn

from ...core.io import atomic_save_file, atomic_write_text, load_safetensors

CHUNK = 64          # images per cache file
THUMB = 256         # images larger than this are stored at this short side
_COMPONENTS = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


def cache_root(cfg_dir: str = "") -> str:
    """``cfg_dir`` as given, else $CONCEPT_EDIT_CACHE/sliderspace, else ~/.cache/concept_edit/sliderspace."""
    if cfg_dir:
        return cfg_dir
    base = os.environ.get("CONCEPT_EDIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "concept_edit")
    return os.path.join(base, "sliderspace")


@torch.no_grad()
def model_fingerprint(pipe) -> str:
    h = hashlib.sha256()
    for comp in _COMPONENTS:
        m = getattr(pipe, comp, None)
        if not isinstance(m, nn.Module):
            continue
        for name, t in m.state_dict().items():
            if ".lora_" in name:  # adapters someone left on the model are not the model
                continue
            flat = t.detach().reshape(-1)
            h.update(f"{comp}.{name}{tuple(t.shape)}{t.dtype}".encode())
            if flat.numel():
                step = max(1, flat.numel() // 64)
                h.update(flat[::step][:64].double().cpu().numpy().tobytes())
                h.update(struct.pack("<d", float(flat.double().sum())))
    h.update(json.dumps(dict(pipe.scheduler.config), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:24] or "prompt"


class SampleCache:
    """One cache directory: ``key`` from the sampling settings (N excluded)."""

    def __init__(self, root: str, model_fp: str, prompts: list[str], seed: int, steps: int,
                 guidance: float, size: int):
        self.meta = {"version": 1, "model": model_fp, "prompts": list(prompts), "seed": seed,
                     "steps": steps, "guidance": guidance, "size": size}
        key = hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()[:16]
        self.key = key
        self.dir = os.path.join(root, f"{_slug(prompts[0])}-{key}")

    def _chunks(self) -> list[str]:
        if not os.path.isdir(self.dir):
            return []
        return sorted(f for f in os.listdir(self.dir) if re.fullmatch(r"samples-\d{5}\.safetensors", f))

    def count(self) -> int:
        """Images stored (contiguous chunks from 0)."""
        n = 0
        for i, f in enumerate(self._chunks()):
            if f != f"samples-{i:05d}.safetensors":
                break
            n += int(json.loads(_meta_of(os.path.join(self.dir, f)).get("n", "0")))
        return n

    def load(self, n: int) -> tuple[torch.Tensor, np.ndarray]:
        """(latents, images) of the first n samples."""
        lat, img, have = [], [], 0
        for f in self._chunks():
            if have >= n:
                break
            sd = load_safetensors(os.path.join(self.dir, f))
            lat.append(sd["latents"])
            img.append(sd["images"].numpy())
            have += len(sd["latents"])
        return torch.cat(lat)[:n], np.concatenate(img)[:n]

    def fill(self, pipe, n: int, progress: bool = False, batch: int = 16) -> bool:
        """Sample images count()..n-1 (whole chunks); True if anything was sampled."""
        from tqdm.auto import tqdm

        from ...core.sampler import sample

        have = self.count()
        if have >= n:
            return False
        os.makedirs(self.dir, exist_ok=True)
        atomic_write_text(os.path.join(self.dir, "meta.json"), json.dumps(self.meta, indent=1))
        m = self.meta
        P = len(m["prompts"])
        start = (have // CHUNK) * CHUNK  # a partial last chunk is redone (they are written whole)
        bar = tqdm(total=n, initial=start, desc="sample", unit="img", disable=not progress)
        try:
            for c0 in range(start, n, CHUNK):
                idx = list(range(c0, min(c0 + CHUNK, n)))
                lats, imgs = [], []
                for b0 in range(0, len(idx), batch):
                    ii = idx[b0:b0 + batch]
                    res = sample(pipe, [m["prompts"][i % P] for i in ii], seed=[m["seed"] + i for i in ii],
                                 steps=m["steps"], guidance=m["guidance"], height=m["size"], width=m["size"],
                                 output_type="np")
                    lats.append(res.latents.detach().float().cpu())
                    imgs.append(_store_images((np.clip(res.images, 0, 1) * 255).round().astype(np.uint8)))
                    bar.update(len(ii))
                atomic_save_file({"latents": torch.cat(lats), "images": torch.from_numpy(np.concatenate(imgs))},
                                 os.path.join(self.dir, f"samples-{c0 // CHUNK:05d}.safetensors"),
                                 metadata={"n": str(len(idx)), "first": str(c0)})
        finally:
            bar.close()
        return True

    def embeddings(self, embedder, images: np.ndarray, progress: bool = False) -> tuple[torch.Tensor, bool]:
        """Embeddings of ``images`` (the first len(images) samples): (tensor, reused)."""
        path = os.path.join(self.dir, f"embed-{embedder.fingerprint}.safetensors")
        old = load_safetensors(path)["embeddings"] if os.path.exists(path) else torch.zeros(0)
        n = len(images)
        if len(old) >= n:
            return old[:n], True
        new = embedder.embed(images[len(old):], progress=progress)
        emb = torch.cat([old.reshape(-1, new.shape[1]), new]) if len(old) else new
        atomic_save_file({"embeddings": emb}, path, metadata={"embedder": embedder.spec, "n": str(n)})
        return emb, False


def _meta_of(path: str) -> dict:
    from ...core.io import read_metadata

    return read_metadata(path)


def _store_images(images: np.ndarray) -> np.ndarray:
    h, w = images.shape[1:3]
    if min(h, w) <= THUMB:
        return images
    import torch.nn.functional as F

    r = THUMB / min(h, w)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(round(h * r), round(w * r)), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t
