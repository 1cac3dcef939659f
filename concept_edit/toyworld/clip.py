"""A toy CLIP trained on the toy world, loadable through open_clip (model config ``toy-clip``).

Example::

    >>> from concept_edit.toyworld.clip import load_toy_clip, zero_shot, embed_texts
    >>> model, preprocess, tokenizer = load_toy_clip()      # weights/toy-clip, via open_clip
    >>> zero_shot(images, "colour")                          # images: (N, 64, 64, 3) uint8
    ['red', 'blue', ...]

Plain open_clip works as well (the directory ships the model config beside the weights)::

    >>> import open_clip
    >>> open_clip.add_model_config("weights/toy-clip/toy-clip.json")
    >>> model, _, preprocess = open_clip.create_model_and_transforms(
    ...     "toy-clip", pretrained="weights/toy-clip/open_clip_model.safetensors")
    >>> tokenizer = open_clip.get_tokenizer("toy-clip")
    >>> # or: open_clip.create_model_and_transforms("local-dir:weights/toy-clip")

Image tower: open_clip's ModifiedResNet for 64x64 input; text tower: open_clip's text
transformer over the real CLIP BPE vocabulary (open_clip's SimpleTokenizer). Zero-shot labels
come from prompt ensembles over the v1 caption grammar (every prompt naming the value).

The training recipe (:func:`train_toy_clip`, ``scripts/train_toy_clip.py``) is contrastive with
a learnable temperature on toy renders, their reconstructions through the toy-world VAE and
toy-world samples, with v1 captions including partial ones. A caption is a positive of every
image it truly describes ("a circle" matches all circles in the batch), so the InfoNCE targets
are soft over all true pairs in both directions; each image also gets a hard-negative caption
that differs from its own in one attribute.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..core.config import ConfigError, StrictConfig, field
from ..core.embedded import embedded_path
from .captions import all_prompts, caption
from .render import BACKGROUNDS, COLOUR_NAMES, SHAPES, SIZE_NAMES

NAME = "toy-clip"
DEFAULT_DIR = embedded_path("toy-clip")  # a checkout's weights/, or the installed wheel's
WEIGHTS_FILE = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
ATTRIBUTES = {"shape": SHAPES, "colour": COLOUR_NAMES, "size": SIZE_NAMES, "background": BACKGROUNDS}
ATTR_KEYS = tuple(ATTRIBUTES)
ONE_TEMPLATE = "a photo of a {}"  # eval/clip_scorer.py's default template
PREPROCESS_CFG = {"size": 64, "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
                  "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                  "resize_mode": "shortest", "fill_color": 0}


# --------------------------------------------------------------------------- config & registry

@dataclasses.dataclass
class ToyClipConfig(StrictConfig):
    name: str = field(NAME, "open_clip model-config name written beside the weights")
    seed: int = field(0, "seed of data, init and batches")
    steps: int = field(2500, "optimisation steps")
    batch: int = field(128, "images per step")
    lr: float = field(2e-3, "peak learning rate (AdamW; SparseAdam for the token table)")
    warmup: int = field(100, "linear warm-up steps")
    weight_decay: float = field(0.05, "AdamW weight decay of matrices (not norms, biases, embeddings)")
    n_renders: int = field(40_000, "cached training renders")
    n_recon: int = field(8_000, "renders also seen through the toy-world VAE (0: none)")
    sample_seeds: int = field(4, "toy-world samples per full prompt (96 prompts; 0: none)")
    p_recon: float = field(0.3, "share of a batch drawn from VAE reconstructions")
    p_sample: float = field(0.1, "share of a batch drawn from toy-world samples")
    p_drop: float = field(0.2, "caption dropout of each of size, colour, background (v1 grammar)")
    hard_negatives: bool = field(True, "add per image a caption with one named attribute swapped")
    noise: float = field(0.03, "max std of added pixel noise (images in [0, 1])")
    embed_dim: int = field(128, "joint embedding width")
    vision_width: int = field(16, "ModifiedResNet base width (features = 32 x width)")
    vision_depth: int = field(1, "bottleneck blocks per ResNet stage")
    text_width: int = field(96, "text transformer width (the 49,408-row token table dominates size)")
    text_layers: int = field(2, "text transformer layers")
    text_heads: int = field(4, "text attention heads")
    context_length: int = field(24, "text context (v1 captions use at most 10 tokens)")
    toy_world: str = field(embedded_path("toy-world"),
                           "toy-world pipeline for VAE reconstructions and samples")
    ckpt_every: int = field(250, "checkpoint period (steps)")
    eval_every: int = field(500, "quick zero-shot check on fresh renders (0: never)")
    threads: int = field(1, "torch CPU threads")

    def check(self):
        for k in ("steps", "batch", "n_renders", "ckpt_every", "embed_dim", "vision_width",
                  "vision_depth", "text_width", "text_layers", "text_heads", "context_length"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"ToyClipConfig.{k} must be positive, got {getattr(self, k)}")
        if self.text_width % self.text_heads:
            raise ConfigError("ToyClipConfig.text_width must be a multiple of text_heads")
        if (self.vision_width * 32) % 64:
            raise ConfigError("ToyClipConfig.vision_width must be even (attention heads of 64)")
        if not 0 <= self.p_recon + self.p_sample <= 1:
            raise ConfigError("ToyClipConfig.p_recon + p_sample must lie in [0, 1]")
        if self.n_recon > self.n_renders:
            raise ConfigError("ToyClipConfig.n_recon must not exceed n_renders")


def model_config(cfg: ToyClipConfig | None = None) -> dict:
    """The open_clip model config (``{name}.json``) of a toy CLIP."""
    cfg = cfg or ToyClipConfig()
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {"image_size": 64, "layers": [cfg.vision_depth] * 4, "width": cfg.vision_width,
                       "head_width": 64},
        "text_cfg": {"context_length": cfg.context_length, "vocab_size": 49408, "width": cfg.text_width,
                     "heads": cfg.text_heads, "layers": cfg.text_layers},
    }


def _dir_config(path: str) -> tuple[str, str, dict]:
    """(name, config file, model config) of a toy CLIP directory."""
    oc = os.path.join(path, OPEN_CLIP_CONFIG)
    if not os.path.exists(oc):
        raise FileNotFoundError(f"no toy CLIP at {path!r} (missing {OPEN_CLIP_CONFIG}); train one with "
                                "`python scripts/train_toy_clip.py --out weights/toy-clip`")
    with open(oc) as f:
        name = json.load(f).get("model_name", NAME)
    cfg_file = os.path.join(path, name + ".json")
    with open(cfg_file) as f:
        return name, cfg_file, json.load(f)


def register(path: str | None = None) -> str:
    """Register a toy CLIP directory's model config with open_clip (idempotent); its name."""
    import open_clip

    name, cfg_file, cfg = _dir_config(path or DEFAULT_DIR)
    if open_clip.get_model_config(name) != cfg:
        open_clip.add_model_config(cfg_file)
    return name


def create(cfg: ToyClipConfig):
    """A randomly initialised toy CLIP built by open_clip from the config (for training)."""
    import open_clip

    return open_clip.CLIP(**model_config(cfg))


def load_toy_clip(path: str | None = None, device: str = "cpu"):
    """(model, preprocess, tokenizer) of a toy CLIP directory, through open_clip's create path."""
    import open_clip

    path = path or DEFAULT_DIR
    name = register(path)
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=os.path.join(path, WEIGHTS_FILE), device=device)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


@functools.lru_cache(maxsize=4)
def _cached(path: str, device: str):
    return load_toy_clip(path, device)


def default_clip(path: str | None = None, device: str = "cpu"):
    """The shipped toy CLIP (loaded once per process)."""
    return _cached(os.path.abspath(path or DEFAULT_DIR), device)


def export(model, cfg: ToyClipConfig, out_dir: str, meta: dict | None = None) -> str:
    """Write ``{name}.json``, ``open_clip_config.json`` and the safetensors weights (atomically)."""
    from ..core.io import atomic_dir, atomic_save_file

    mc = model_config(cfg)
    with atomic_dir(out_dir, keep=("README.md",)) as tmp:
        with open(os.path.join(tmp, cfg.name + ".json"), "w") as f:
            json.dump(mc, f, indent=1)
        with open(os.path.join(tmp, OPEN_CLIP_CONFIG), "w") as f:
            json.dump({"model_name": cfg.name, "model_cfg": mc, "preprocess_cfg": PREPROCESS_CFG}, f,
                      indent=1)
        sd = {k: v.detach().float() for k, v in model.state_dict().items()}
        atomic_save_file(sd, os.path.join(tmp, WEIGHTS_FILE),
                         metadata={"concept_edit": json.dumps({"train_config": cfg.to_dict(),
                                                               **(meta or {})})})
    return out_dir


# --------------------------------------------------------------------------- inference helpers

def _device(model) -> torch.device:
    return next(model.parameters()).device


def to_input(images: np.ndarray, model, preprocess=None) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, 64, 64), as open_clip's preprocess does."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    if images.shape[1:3] != (size, size):  # other sizes: open_clip's own PIL preprocess
        if preprocess is None:
            raise ValueError(f"images are {images.shape[1:3]}, the toy CLIP takes {size}x{size}; "
                             "pass preprocess (from load_toy_clip) to resize them")
        from PIL import Image

        return torch.stack([preprocess(Image.fromarray(im)) for im in images])
    pc = getattr(model.visual, "preprocess_cfg", PREPROCESS_CFG)
    mean = torch.tensor(pc["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pc["std"]).view(1, 3, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - mean) / std


@torch.no_grad()
def embed_images(images: np.ndarray, clip=None, batch: int = 512) -> torch.Tensor:
    """L2-normalised image embeddings (N, D) of uint8 (N, H, W, 3) images."""
    model, preprocess, _ = clip or default_clip()
    dev = _device(model)
    out = [model.encode_image(to_input(images[i:i + batch], model, preprocess).to(dev), normalize=True)
           for i in range(0, len(images), batch)]
    return torch.cat(out).float().cpu() if out else torch.zeros(0, model.text_projection.shape[1])


@torch.no_grad()
def embed_texts(texts: list[str], clip=None, batch: int = 1024) -> torch.Tensor:
    """L2-normalised text embeddings (N, D)."""
    model, _, tokenizer = clip or default_clip()
    dev = _device(model)
    texts = list(texts)
    out = [model.encode_text(tokenizer(texts[i:i + batch]).to(dev), normalize=True)
           for i in range(0, len(texts), batch)]
    return torch.cat(out).float().cpu()


def prompts_for(attribute: str, value: str) -> list[str]:
    """The prompt ensemble of a value: every v1 grammar prompt naming it."""
    _check_attribute(attribute, [value])
    return [p["prompt"] for p in all_prompts() if p["named"].get(attribute) == value]


def _check_attribute(attribute: str, values) -> tuple[str, ...]:
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; choose one of {', '.join(ATTRIBUTES)}")
    values = tuple(values) if values else ATTRIBUTES[attribute]
    bad = [v for v in values if v not in ATTRIBUTES[attribute]]
    if bad:
        raise ValueError(f"unknown {attribute} {bad[0]!r}; choose from {', '.join(ATTRIBUTES[attribute])}")
    return values


def class_embeddings(attribute: str, values=None, clip=None) -> torch.Tensor:
    """(V, D) normalised mean embedding of each value's prompt ensemble."""
    values = _check_attribute(attribute, values)
    embs = [embed_texts(prompts_for(attribute, v), clip).mean(0) for v in values]
    return F.normalize(torch.stack(embs), dim=-1)


def predict(images: np.ndarray, clip=None, attributes=ATTR_KEYS) -> dict[str, list[str]]:
    """Zero-shot labels of every attribute (the image embeddings are computed once)."""
    f = embed_images(images, clip)
    return {a: [ATTRIBUTES[a][i] for i in (f @ class_embeddings(a, None, clip).T).argmax(-1).tolist()]
            for a in attributes}


def zero_shot(images: np.ndarray, attribute: str, clip=None, values=None) -> list[str]:
    """Zero-shot label of ``attribute`` (shape, colour, size or background) for each image;
    ``values`` restricts the choice (e.g. ['red', 'blue'])."""
    values = _check_attribute(attribute, values)
    f = embed_images(images, clip)
    return [values[i] for i in (f @ class_embeddings(attribute, values, clip).T).argmax(-1).tolist()]


def toy_clip_scorer(spec: str, attributes: list[str]):
    """Scorer plug-in (``toy-clip[:DIR]``): each image's zero-shot value among ``attributes``."""
    axes = [k for k, vocab in ATTRIBUTES.items() if all(a in vocab for a in attributes)]
    if not axes:
        raise ValueError(f"the toy CLIP knows no axis holding all of {attributes}; choose values of one "
                         f"of: {', '.join(f'{k}={list(v)}' for k, v in ATTRIBUTES.items())}")
    path = spec.split(":", 1)[1] if ":" in spec else None
    clip = default_clip(path)
    values = tuple(attributes)
    emb = class_embeddings(axes[0], values, clip)
    return lambda images: [values[i] for i in (embed_images(images, clip) @ emb.T).argmax(-1).tolist()]


# --------------------------------------------------------------------------- training data

def _labels_of(ds) -> np.ndarray:
    return np.stack([ds.shape, ds.colour, ds.size, ds.background], axis=1).astype(np.int64)


def _note_time(work: str, path: str, t0: float) -> None:
    """Record how long building a cached data file took (``data-times.json`` in the work dir)."""
    from ..core.io import atomic_write_text

    f = os.path.join(work, "data-times.json")
    d = json.load(open(f)) if os.path.exists(f) else {}
    d[os.path.basename(path)] = round(time.time() - t0, 1)
    atomic_write_text(f, json.dumps(d, indent=1))


def data_times(work: str) -> dict:
    f = os.path.join(work, "data-times.json")
    return json.load(open(f)) if os.path.exists(f) else {}


def _renders(cfg: ToyClipConfig, work: str, progress: bool):
    from ..core.io import atomic_path
    from .dataset import Dataset, build

    path = os.path.join(work, f"renders-{cfg.seed}-{cfg.n_renders}.npz")
    if os.path.exists(path):
        return Dataset.load(path)
    t0 = time.time()
    ds = build(cfg.n_renders, seed=cfg.seed + 5000, progress=progress)
    with atomic_path(path, ".npz") as tmp:
        ds.save(tmp)
    _note_time(work, path, t0)
    return ds


@torch.no_grad()
def vae_roundtrip(vae, images: np.ndarray, batch: int = 250, progress: bool = False) -> np.ndarray:
    """Images through a VAE (encode mean, decode): the generated-image look."""
    from tqdm.auto import tqdm

    from .classifier import to_tensor

    out = []
    for i in tqdm(range(0, len(images), batch), desc="vae roundtrip", disable=not progress, leave=False):
        x = vae.decode(vae.encode(to_tensor(images[i:i + batch])).latent_dist.mean).sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def _recon(cfg: ToyClipConfig, work: str, images: np.ndarray, progress: bool) -> np.ndarray:
    from ..core.io import atomic_path

    path = os.path.join(work, f"recon-{cfg.seed}-{cfg.n_renders}-{cfg.n_recon}.npy")
    if os.path.exists(path):
        return np.load(path)
    from diffusers import AutoencoderKL

    t0 = time.time()
    vae = AutoencoderKL.from_pretrained(cfg.toy_world, subfolder="vae", use_safetensors=True).eval()
    rec = vae_roundtrip(vae, images[:cfg.n_recon], progress=progress)
    with atomic_path(path, ".npy") as tmp:
        np.save(tmp, rec)
    _note_time(work, path, t0)
    return rec


def full_prompts() -> list[dict]:
    return [p for p in all_prompts() if len(p["named"]) == 4]


def toy_world_samples(toy_world: str, prompts: list[str], seed: int, progress: bool = False) -> np.ndarray:
    """Samples of the toy-world pipeline (default sampler), image i from seed + i."""
    from ..core.loading import load_pipeline
    from ..core.sampling import SampleSettings, generate

    pipe = load_pipeline(toy_world)
    return generate(pipe, SampleSettings(prompt=list(prompts), n=len(prompts), seed=seed, batch=32),
                    progress=progress)


def _samples(cfg: ToyClipConfig, work: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    from ..core.io import atomic_path

    path = os.path.join(work, f"samples-{cfg.seed}-{cfg.sample_seeds}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return z["images"], z["labels"]
    t0 = time.time()
    fp = full_prompts() * cfg.sample_seeds
    images = toy_world_samples(cfg.toy_world, [p["prompt"] for p in fp], seed=cfg.seed * 100_000 + 20_000,
                               progress=progress)
    labels = np.array([[ATTRIBUTES[a].index(p["named"][a]) for a in ATTR_KEYS] for p in fp], dtype=np.int64)
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, images=images, labels=labels)
    _note_time(work, path, t0)
    return images, labels


# --------------------------------------------------------------------------- training

def _lr(step: int, total: int, warmup: int, floor: float = 0.02) -> float:
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


def _caption_of(named: np.ndarray) -> str:
    """Caption from a row of attribute indices (-1: not named); shape is always named."""
    v = {a: (ATTRIBUTES[a][named[k]] if named[k] >= 0 else None) for k, a in enumerate(ATTR_KEYS)}
    return caption(v["shape"], v["colour"], v["size"], v["background"])


def batch_captions(labels: np.ndarray, rng: np.random.Generator, p_drop: float,
                   hard_negatives: bool) -> tuple[list[str], np.ndarray]:
    """Captions (deduplicated) for a batch and the attributes each names (-1 unnamed).

    One v1 caption per image (size, colour, background each dropped with ``p_drop``), plus,
    with ``hard_negatives``, the same caption with one named attribute changed.
    """
    rows = []
    for lab in labels:
        named = lab.copy()
        keep = rng.random(3) >= p_drop  # size, colour, background as in captions.sample_caption
        for k, a in ((2, 0), (1, 1), (3, 2)):
            if not keep[a]:
                named[k] = -1
        rows.append(named)
        if hard_negatives:
            neg = named.copy()
            k = int(rng.choice(np.flatnonzero(neg >= 0)))
            n_vals = len(ATTRIBUTES[ATTR_KEYS[k]])
            neg[k] = (neg[k] + 1 + rng.integers(n_vals - 1)) % n_vals
            rows.append(neg)
    caps, seen = [], {}
    for r in rows:
        c = _caption_of(r)
        if c not in seen:
            seen[c] = r
            caps.append(c)
    return caps, np.stack([seen[c] for c in caps])


def match_matrix(labels: np.ndarray, named: np.ndarray) -> torch.Tensor:
    """(B, T) bool: caption t truly describes image b (every attribute it names matches)."""
    lab, nm = torch.from_numpy(labels), torch.from_numpy(named)
    return ((nm[None] < 0) | (nm[None] == lab[:, None])).all(-1)


def multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, match: torch.Tensor,
                        scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets spread over every true pair.

    image -> text: each image's target is uniform over the captions that describe it;
    text -> image: each caption's target is uniform over the images it describes (captions that
    describe no image in the batch, i.e. pure hard negatives, only act as negatives).
    """
    logits = scale * img @ txt.T
    m = match.float()
    i2t = -(m / m.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    has = match.any(0)
    mt = m[:, has]
    t2i = -(mt / mt.sum(0, keepdim=True) * logits[:, has].log_softmax(0)).sum(0).mean()
    return 0.5 * (i2t + t2i)


class _Ckpt:
    """Model + optimisers + step (safetensors for weights, weights-only torch.load for optimisers)."""

    def __init__(self, path: str):
        self.path = path

    def exists(self) -> bool:
        return os.path.exists(self.path + ".opt.pt") and os.path.exists(self.path + ".safetensors")

    def save(self, step: int, model, opts: dict, extra: dict | None = None):
        from ..core.io import atomic_path, atomic_save_file

        atomic_save_file(model.state_dict(), self.path + ".safetensors", metadata={"step": str(step)})
        state = {"step": step, **{k: o.state_dict() for k, o in opts.items()}, **(extra or {})}
        with atomic_path(self.path + ".opt.pt") as tmp:
            torch.save(state, tmp)

    def load(self, model, opts: dict) -> dict:
        from ..core.io import load_safetensors

        model.load_state_dict(load_safetensors(self.path + ".safetensors"))
        st = torch.load(self.path + ".opt.pt", weights_only=True)
        for k, o in opts.items():
            o.load_state_dict(st[k])
        return st

    def remove(self):
        for ext in (".safetensors", ".opt.pt"):
            if os.path.exists(self.path + ext):
                os.remove(self.path + ext)


def _augment(x: torch.Tensor, g: torch.Generator, noise: float) -> torch.Tensor:
    """x in [0, 1], (B, 3, H, W): random horizontal flip (every v1 shape and background is
    mirror-symmetric), small per-channel gain and pixel noise."""
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    x = x * (1 + 0.06 * (torch.rand(len(x), 3, 1, 1, generator=g) - 0.5))
    if noise > 0:
        x = x + torch.randn(x.shape, generator=g) * noise * torch.rand(len(x), 1, 1, 1, generator=g)
    return x.clamp(0, 1)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(PREPROCESS_CFG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESS_CFG["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def quick_accuracy(model, tokenizer, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    was = model.training
    model.eval()
    clip = (model, None, tokenizer)
    pred = predict(images, clip)
    model.train(was)
    return {a: round(float(np.mean([ATTRIBUTES[a].index(p) == t for p, t in zip(pred[a], labels[:, k])])), 4)
            for k, a in enumerate(ATTR_KEYS)}


def train_toy_clip(cfg: ToyClipConfig, out_dir: str, work_dir: str, resume: bool = True,
                   progress: bool = True) -> str:
    """Train a toy CLIP (seeded, resumable from ``work_dir``) and export it to ``out_dir``."""
    import open_clip
    from tqdm.auto import tqdm

    torch.set_num_threads(cfg.threads)
    os.makedirs(work_dir, exist_ok=True)
    t0 = time.time()
    times = {}
    ds = _renders(cfg, work_dir, progress)
    pools_img, pools_lab = [ds.images], [_labels_of(ds)]
    times["renders_s"] = round(time.time() - t0, 1)
    if cfg.n_recon:
        pools_img.append(_recon(cfg, work_dir, ds.images, progress))
        pools_lab.append(pools_lab[0][:cfg.n_recon])
        times["recon_s"] = round(time.time() - t0 - sum(times.values()), 1)
    if cfg.sample_seeds:
        si, sl = _samples(cfg, work_dir, progress)
        pools_img.append(si)
        pools_lab.append(sl)
        times["samples_s"] = round(time.time() - t0 - sum(times.values()), 1)
    p_src = [1.0 - (cfg.p_recon if cfg.n_recon else 0) - (cfg.p_sample if cfg.sample_seeds else 0)]
    if cfg.n_recon:
        p_src.append(cfg.p_recon)
    if cfg.sample_seeds:
        p_src.append(cfg.p_sample)
    cum = torch.tensor(np.cumsum(p_src)[:-1], dtype=torch.float32)

    from .dataset import build

    val = build(512, seed=cfg.seed + 99_991)
    val_lab = _labels_of(val)

    torch.manual_seed(cfg.seed)
    model = create(cfg).train()
    tokenizer = open_clip.get_tokenizer("", context_length=cfg.context_length)
    tok_cache = {}

    emb = model.token_embedding
    emb.sparse = True  # 49,408 rows, a handful used: sparse gradients + SparseAdam
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p is emb.weight:
            continue
        (decay if p.ndim >= 2 and "positional" not in n else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    sopt = torch.optim.SparseAdam([emb.weight], lr=cfg.lr, betas=(0.9, 0.98))
    opts = {"opt": opt, "sopt": sopt}
    ck = _Ckpt(os.path.join(work_dir, f"{cfg.name}-ckpt"))
    log_path = os.path.join(work_dir, f"{cfg.name}-log.jsonl")
    cfg_path = os.path.join(work_dir, f"{cfg.name}-config.json")
    start, train_s = 0, 0.0
    if resume and ck.exists():
        with open(cfg_path) as f:
            old = json.load(f)
        changed = {k for k in old if k not in ("steps", "ckpt_every", "eval_every", "threads")
                   and old[k] != cfg.to_dict().get(k)}
        if changed:
            raise ConfigError(f"checkpoint in {work_dir} was trained with other settings ({sorted(changed)}); "
                              "pass the same settings, another --work, or --no-resume")
        st = ck.load(model, opts)
        start, train_s = int(st["step"]), float(st.get("train_s", 0.0))
    elif not resume:
        ck.remove()
        if os.path.exists(log_path):
            os.remove(log_path)
    with open(cfg_path, "w") as f:
        json.dump(cfg.to_dict(), f, indent=1)
    log = open(log_path, "a")
    log.write(json.dumps({"event": "start", "step": start, "data": times}) + "\n")
    bar = tqdm(range(start, cfg.steps), desc="toy-clip", initial=start, total=cfg.steps,
               disable=not progress)
    t_loop = time.time()
    for step in bar:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7 * 10_007 + step)
        rng = np.random.default_rng(cfg.seed * 7919 + 31 + step)
        src = torch.bucketize(torch.rand(cfg.batch, generator=g), cum, right=True).numpy()
        imgs, labs = [], []
        for s in range(len(pools_img)):
            k = int((src == s).sum())
            if k:
                idx = torch.randint(len(pools_img[s]), (k,), generator=g).numpy()
                imgs.append(pools_img[s][idx])
                labs.append(pools_lab[s][idx])
        labels = np.concatenate(labs)
        x = torch.from_numpy(np.concatenate(imgs)).permute(0, 3, 1, 2).float() / 255.0
        x = _normalise(_augment(x, g, cfg.noise))
        caps, named = batch_captions(labels, rng, cfg.p_drop, cfg.hard_negatives)
        for c in caps:
            if c not in tok_cache:
                tok_cache[c] = tokenizer([c])[0]
        tok = torch.stack([tok_cache[c] for c in caps])
        for o in (opt, sopt):
            for pg in o.param_groups:
                pg["lr"] = cfg.lr * _lr(step, cfg.steps, cfg.warmup)
        fi = model.encode_image(x, normalize=True)
        ft = model.encode_text(tok, normalize=True)
        loss = multi_positive_loss(fi, ft, match_matrix(labels, named), model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        sopt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sopt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}", T=f"{model.logit_scale.exp().item():.0f}")
        rec = {"step": step + 1, "loss": round(loss.item(), 4),
               "logit_scale": round(model.logit_scale.exp().item(), 2),
               "train_s": round(train_s + time.time() - t_loop, 1)}
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            rec["val_renders"] = quick_accuracy(model, tokenizer, val.images, val_lab)
            tqdm.write(json.dumps(rec))
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            ck.save(step + 1, model, opts, {"train_s": train_s + time.time() - t_loop})
        if (step + 1) % 25 == 0 or "val_renders" in rec or step + 1 == cfg.steps:
            log.write(json.dumps(rec) + "\n")
            log.flush()
    total_train_s = train_s + time.time() - t_loop if start < cfg.steps else train_s
    log.write(json.dumps({"event": "done", "steps": cfg.steps, "train_s": round(total_train_s, 1)}) + "\n")
    log.close()
    model.eval()
    export(model, cfg, out_dir, meta={"steps": cfg.steps, "train_loop_s": round(total_train_s, 1)})
    return out_dir


# --------------------------------------------------------------------------- evaluation

def evaluate(path: str | None = None, n_renders: int = 1000, render_seed: int = 777_001,
             n_samples: int = 128, sample_seed: int = 900_000, toy_world: str | None = None,
             classifier: str | None = None, clip=None, progress: bool = False) -> dict:
    """Zero-shot accuracy on fresh renders and agreement with the toy classifier on toy-world
    samples (prompts: v1 captions of fresh scenes, dropout 0.2, never empty)."""
    from .captions import sample_caption
    from .classifier import load_classifier
    from .classifier import predict as clf_predict
    from .dataset import build
    from .render import sample_scene

    clip = clip or load_toy_clip(path)
    out: dict = {}
    t = time.time()
    ds = build(n_renders, seed=render_seed)
    pred = predict(ds.images, clip)
    lab = _labels_of(ds)
    out["renders"] = {a: round(float(np.mean([ATTRIBUTES[a].index(p) == y for p, y in zip(pred[a], lab[:, k])])), 4)
                      for k, a in enumerate(ATTR_KEYS)}
    out["renders"]["n"] = n_renders
    out["renders"]["seed"] = render_seed
    f = embed_images(ds.images, clip)  # one plain template instead of the grammar ensemble
    out["renders_one_template"] = {
        a: round(float(((f @ embed_texts([ONE_TEMPLATE.format(v) for v in ATTRIBUTES[a]], clip).T)
                        .argmax(-1).numpy() == lab[:, k]).mean()), 4) for k, a in enumerate(ATTR_KEYS)}
    if n_samples:
        rng = np.random.default_rng(sample_seed)
        scenes = [sample_scene(rng=rng) for _ in range(n_samples)]
        prompts = [sample_caption(s, rng, p_empty=0.0) for s in scenes]
        imgs = toy_world_samples(toy_world or embedded_path("toy-world"), prompts,
                                 seed=sample_seed, progress=progress)
        cp = predict(imgs, clip)
        kp = clf_predict(load_classifier(classifier), imgs)
        agree = {}
        for a in ATTR_KEYS:
            pairs = [(c, k[a]) for c, k in zip(cp[a], kp) if k["shape"] != "none"]
            agree[a] = round(float(np.mean([c == k for c, k in pairs])), 4)
        agree["n"] = n_samples
        agree["classifier_none"] = int(sum(k["shape"] == "none" for k in kp))
        out["samples_agreement"] = agree
        from .captions import parse

        named = [parse(p) for p in prompts]
        for who, preds in (("toy_clip", cp), ("classifier", {a: [k[a] for k in kp] for a in ATTR_KEYS})):
            out[f"samples_{who}_vs_prompt"] = {
                a: round(float(np.mean([preds[a][i] == n[a] for i, n in enumerate(named) if a in n])), 4)
                for a in ATTR_KEYS}
        out["samples_seed"] = sample_seed
    out["eval_s"] = round(time.time() - t, 1)
    return out
