"""Training and evaluation of the toy CLIP (the model itself: ``toyworld.clip``).

Example::

    >>> from concept_edit.toyworld.clip import ToyClipConfig
    >>> from concept_edit.toyworld.clip_train import evaluate, train_toy_clip
    >>> train_toy_clip(ToyClipConfig(), "weights/toy-clip", ".cache/toy-clip")   # resumable
    >>> evaluate("weights/toy-clip")["renders"]          # zero-shot accuracy per attribute

``scripts/train_toy_clip.py`` runs both and writes the model card. The recipe: contrastive with
a learnable temperature on toy renders, their reconstructions through the toy-world VAE and
toy-world samples, with v1 captions including partial ones; a caption is a positive of every
image it truly describes, and each image gets a hard-negative caption one attribute away.
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import torch

from ..core.config import ConfigError
from ..core.embedded import embedded_path
from .captions import all_prompts, caption
from .clip import (ATTR_KEYS, ATTRIBUTES, ONE_TEMPLATE, PREPROCESS_CFG, ToyClipConfig, create, embed_images,
                   embed_texts, export, load_toy_clip, predict)


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
