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

The training recipe (``toyworld.clip_train``, ``scripts/train_toy_clip.py``) is contrastive with
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
import os

import numpy as np
import torch
import torch.nn.functional as F

from ..core.config import ConfigError, StrictConfig, field
from ..core.embedded import embedded_path
from .captions import all_prompts
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
