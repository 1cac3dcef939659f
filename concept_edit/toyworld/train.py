"""Reproducible training recipe of the toy world: data -> VAE -> latents -> classifier -> UNet.

Example (the exact command behind weights/; resumable: rerun it after an interruption)::

    concept-edit toyworld train --work .cache/toyworld --out weights/toy-world

Every stage checkpoints into ``--work`` and is skipped when its output exists; batches are drawn
from a generator seeded by (seed, stage, step), so a resumed run sees the same batches.
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.io import atomic_dir, atomic_path, atomic_save_file, load_safetensors
from .captions import sample_caption
from .config import ToyTrainConfig, sampler_defaults
from .classifier import save_classifier, to_tensor
from .dataset import NONE, Dataset, build
from .models import ToyClassifier, make_scheduler, make_text_encoder, make_unet, make_vae


def _gen(cfg, stage: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + stage * 10_007 + step)


def _drops(cfg) -> tuple[float, float, float]:
    return cfg.drop_size, cfg.drop_colour, cfg.drop_background


def _lr(step: int, total: int, warmup: int = 200, floor: float = 0.05) -> float:
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


class _Ckpt:
    """Model + optimizer + step checkpoint (safetensors for weights, weights_only torch for opt)."""

    def __init__(self, path: str):
        self.path = path

    def save(self, step: int, modules: dict, opt, sopt=None):
        sd = {f"{n}.{k}": v for n, m in modules.items() for k, v in m.state_dict().items()}
        atomic_save_file(sd, self.path + ".safetensors", metadata={"step": str(step)})
        state = {"opt": opt.state_dict(), "step": step}
        if sopt is not None:
            state["sopt"] = sopt.state_dict()
        with atomic_path(self.path + ".opt.pt") as tmp:
            torch.save(state, tmp)

    def load(self, modules: dict, opt, sopt=None) -> int:
        if not os.path.exists(self.path + ".opt.pt"):
            return 0
        sd = load_safetensors(self.path + ".safetensors")
        for n, m in modules.items():
            m.load_state_dict({k[len(n) + 1:]: v for k, v in sd.items() if k.startswith(n + ".")})
        st = torch.load(self.path + ".opt.pt", weights_only=True)
        opt.load_state_dict(st["opt"])
        if sopt is not None:
            sopt.load_state_dict(st["sopt"])
        return int(st["step"])


def stage_data(cfg) -> Dataset:
    path = os.path.join(cfg.work, f"data-{cfg.seed}-{cfg.n_images}.npz")
    if os.path.exists(path):
        return Dataset.load(path)
    ds = build(cfg.n_images, seed=cfg.seed, progress=True)
    with atomic_path(path, ".npz") as tmp:
        ds.save(tmp)
    return ds


def _shape_weight(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel weight 1 + 3 * (pixel is coloured): the shape matters more than the background."""
    sat = x.max(1, keepdim=True).values - x.min(1, keepdim=True).values
    return 1.0 + 3.0 * (sat > 0.15).float()


def stage_vae(cfg, ds: Dataset):
    path = os.path.join(cfg.work, "vae.safetensors")
    vae = make_vae()
    if os.path.exists(path):
        vae.load_state_dict(load_safetensors(path))
        return vae.eval()
    torch.manual_seed(cfg.seed)
    vae = make_vae().train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ck = _Ckpt(os.path.join(cfg.work, "vae-ckpt"))
    start = ck.load({"vae": vae}, opt)
    bar = tqdm(range(start, cfg.vae_steps), desc="vae", initial=start, total=cfg.vae_steps)
    for step in bar:
        g = _gen(cfg, 1, step)
        idx = torch.randint(len(ds), (cfg.vae_batch,), generator=g)
        x = to_tensor(ds.images[idx.numpy()])
        if cfg.vae_crop < 64:  # fully convolutional: train on crops (aligned to the 4x grid)
            oy, ox = (torch.randint(0, (64 - cfg.vae_crop) // 4 + 1, (2,), generator=g) * 4).tolist()
            x = x[:, :, oy:oy + cfg.vae_crop, ox:ox + cfg.vae_crop]
        for pg in opt.param_groups:
            pg["lr"] = cfg.vae_lr * _lr(step, cfg.vae_steps)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        w = _shape_weight(x)
        loss = (w * ((rec - x).abs() + (rec - x) ** 2)).mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.ckpt_every == 0:
            ck.save(step + 1, {"vae": vae}, opt)
    atomic_save_file(vae.state_dict(), path)
    return vae.eval()


@torch.inference_mode()
def stage_latents(cfg, ds: Dataset, vae) -> tuple[torch.Tensor, float]:
    path = os.path.join(cfg.work, "latents.safetensors")
    if os.path.exists(path):
        sd = load_safetensors(path)
        return sd["latents"], float(sd["scale"])
    lat = []
    for i in tqdm(range(0, len(ds), 500), desc="encode"):
        lat.append(vae.encode(to_tensor(ds.images[i:i + 500])).latent_dist.mean)
    lat = torch.cat(lat)
    scale = float(1.0 / lat.std())
    atomic_save_file({"latents": lat, "scale": torch.tensor(scale)}, path)
    return lat, scale


@torch.inference_mode()
def _reconstruct(vae, images: np.ndarray, scale: float) -> np.ndarray:
    out = []
    for i in tqdm(range(0, len(images), 500), desc="vae recon", leave=False):
        z = vae.encode(to_tensor(images[i:i + 500])).latent_dist.mean
        x = vae.decode(z).sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def stage_classifier(cfg, vae, scale: float):
    """Classifier on renders and their VAE reconstructions (the generated-image look), + bare bg."""
    if os.path.exists(os.path.join(cfg.classifier_out, "config.json")):
        return
    ds = build(cfg.clf_images, seed=cfg.seed + 101, p_none=0.08, progress=True)
    rec = _reconstruct(vae, ds.images, scale)
    torch.manual_seed(cfg.seed + 1)
    model = ToyClassifier().train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    labels = {k: torch.from_numpy(getattr(ds, k)) for k in ("shape", "colour", "size", "background",
                                                             "radius", "cx", "cy")}
    bar = tqdm(range(cfg.clf_steps), desc="classifier")
    for step in bar:
        g = _gen(cfg, 3, step)
        idx = torch.randint(len(ds), (cfg.clf_batch,), generator=g)
        use_rec = torch.rand(cfg.clf_batch, generator=g) < 0.5
        imgs = np.where(use_rec.numpy()[:, None, None, None], rec[idx.numpy()], ds.images[idx.numpy()])
        x = to_tensor(imgs)
        x = x + torch.randn(x.shape, generator=g) * 0.04 * torch.rand(len(x), 1, 1, 1, generator=g)
        x = x * (1 + 0.06 * (torch.rand(len(x), 3, 1, 1, generator=g) - 0.5))
        for pg in opt.param_groups:
            pg["lr"] = 2e-3 * _lr(step, cfg.clf_steps, warmup=100, floor=0.01)
        out = model(x)
        has = labels["shape"][idx] != NONE
        loss = F.cross_entropy(out["shape"], labels["shape"][idx])
        loss = loss + F.cross_entropy(out["background"], labels["background"][idx])
        for k in ("colour", "size"):
            loss = loss + F.cross_entropy(out[k][has], labels[k][idx][has])
        for k in ("radius", "cx", "cy"):
            loss = loss + 0.1 * F.smooth_l1_loss(out[k][has], labels[k][idx][has])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    save_classifier(model.eval(), cfg.classifier_out,
                    {"seed": cfg.seed, "steps": cfg.clf_steps, "train_images": len(ds)})


def _tokenize_cache(tokenizer, captions) -> dict[str, torch.Tensor]:
    ids = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return dict(zip(captions, ids))


def stage_unet(cfg, ds: Dataset, latents: torch.Tensor, vae, scale: float, tokenizer):
    from .captions import all_prompts

    done = os.path.join(cfg.work, "unet-final.safetensors")
    torch.manual_seed(cfg.seed + 2)
    unet, te = make_unet(cfg.unet_width), make_text_encoder()
    if os.path.exists(done):
        sd = load_safetensors(done)
        unet.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("unet.")})
        te.load_state_dict({k[3:]: v for k, v in sd.items() if k.startswith("te.")})
        return unet.eval(), te.eval()
    sched = make_scheduler()
    ac = sched.alphas_cumprod.float()
    snr = ac / (1 - ac)
    weight = snr.clamp(max=cfg.min_snr) / snr
    # The 49,408-row token table would dominate every AdamW step; only a few rows are used, so it
    # gets sparse gradients and SparseAdam (same maths on the rows that receive gradient).
    emb = te.embeddings.token_embedding
    emb.sparse = True
    params = [p for p in list(unet.parameters()) + list(te.parameters()) if p is not emb.weight]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    sopt = torch.optim.SparseAdam([emb.weight], lr=cfg.unet_lr)
    ema_u, ema_t = make_unet(cfg.unet_width), make_text_encoder()
    ema_u.load_state_dict(unet.state_dict())
    ema_t.load_state_dict(te.state_dict())
    ck = _Ckpt(os.path.join(cfg.work, "unet-ckpt"))
    start = ck.load({"unet": unet, "te": te, "ema_u": ema_u, "ema_t": ema_t}, opt, sopt)
    unet.train()
    te.train()
    ids = _tokenize_cache(tokenizer, [""] + [p["prompt"] for p in all_prompts()])
    lat = latents * scale
    log = open(os.path.join(cfg.work, "unet-log.jsonl"), "a")
    bar = tqdm(range(start, cfg.unet_steps), desc="unet", initial=start, total=cfg.unet_steps)
    t0 = time.time()
    for step in bar:
        g = _gen(cfg, 4, step)
        rng = np.random.default_rng(cfg.seed * 7919 + step)
        idx = torch.randint(len(ds), (cfg.unet_batch,), generator=g)
        caps = [sample_caption(ds.scene(int(i)), rng, _drops(cfg)) for i in idx]
        tok = torch.stack([ids[c] for c in caps])
        x0 = lat[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (len(x0),), generator=g)
        xt = sched.add_noise(x0, noise, t)
        for pg in opt.param_groups + sopt.param_groups:
            pg["lr"] = cfg.unet_lr * _lr(step, cfg.unet_steps, warmup=300)
        cond = te(tok)[0]
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        loss = (weight[t] * ((pred - noise) ** 2).mean((1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        sopt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sopt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for m, e in ((unet, ema_u), (te, ema_t)):
                torch._foreach_lerp_(list(e.parameters()), list(m.parameters()), 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.ckpt_every == 0:
            ck.save(step + 1, {"unet": unet, "te": te, "ema_u": ema_u, "ema_t": ema_t}, opt, sopt)
        rec = {"step": step + 1, "loss": round(loss.item(), 5), "sec": round(time.time() - t0, 1)}
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            rec["quick_eval"] = quick_eval(cfg, vae, scale, ema_u.eval(), ema_t.eval(), tokenizer)
            tqdm.write(json.dumps(rec))
        if (step + 1) % 50 == 0 or "quick_eval" in rec:
            log.write(json.dumps(rec) + "\n")
            log.flush()
    ema_u.eval()
    ema_t.eval()
    sd = {f"unet.{k}": v for k, v in ema_u.state_dict().items()}
    sd.update({f"te.{k}": v for k, v in ema_t.state_dict().items()})
    atomic_save_file(sd, done)
    return ema_u, ema_t


def assemble(vae, unet, te, tokenizer, scale: float):
    from diffusers import StableDiffusionPipeline

    vae.register_to_config(scaling_factor=scale)
    return StableDiffusionPipeline(vae=vae.eval(), text_encoder=te.eval(), tokenizer=tokenizer,
                                   unet=unet.eval(), scheduler=make_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


@torch.inference_mode()
def quick_eval(cfg, vae, scale, unet, te, tokenizer, n: int = 64) -> dict:
    out = score_pipe(cfg, assemble(vae, unet, te, tokenizer, scale), n)
    unet.train()
    te.train()
    return out


@torch.inference_mode()
def score_pipe(cfg, pipe, n: int = 64) -> dict:
    """Share of ``n`` random full prompts (seeded) whose attributes the classifier sees."""
    from .captions import caption
    from .classifier import load_classifier, predict
    from .render import sample_scene

    rng = np.random.default_rng(123)
    scenes = [sample_scene(rng=rng) for _ in range(n)]
    prompts = [caption(s.shape, s.colour, s.size, s.background) for s in scenes]
    img = pipe(prompts, num_inference_steps=25, guidance_scale=5.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    preds = predict(load_classifier(cfg.classifier_out), (img * 255).round().astype(np.uint8))
    return {k: round(float(np.mean([p[k] == getattr(s, k) for p, s in zip(preds, scenes)])), 3)
            for k in ("shape", "colour", "size", "background")}


SAMPLER_DEFAULTS = {"size": 64, "steps": 25, "guidance": 5.0, "world": "toy"}


def portable_text_encoder(d: str) -> None:
    """Re-save the text encoder with the ``text_model.`` key prefix that transformers 4 expects
    (transformers 5 reads both; without it transformers 4 silently re-initialises the encoder)."""
    from safetensors.torch import load_file, save_file

    path = os.path.join(d, "model.safetensors")
    sd = load_file(path)
    if not any(k.startswith("text_model.") for k in sd):
        save_file({("text_model." + k if not k.startswith("text_model.") else k): v for k, v in sd.items()},
                  path, metadata={"format": "pt"})


def write_tokenizer_vocab(d: str) -> None:
    """vocab.json + merges.txt beside tokenizer.json so slow/older tokenizer loaders work too."""
    from ..core.tokenizers import write_clip_tokenizer_files

    tmp = d + ".vocab"
    write_clip_tokenizer_files(tmp)
    for name in ("vocab.json", "merges.txt"):
        os.replace(os.path.join(tmp, name), os.path.join(d, name))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


def run(cfg: ToyTrainConfig) -> str:
    from ..core.tokenizers import clip_tokenizer

    if cfg.arch == "mmdit":
        from .mmdit import run as run_mmdit

        return run_mmdit(cfg)
    torch.set_num_threads(cfg.threads)
    os.makedirs(cfg.work, exist_ok=True)
    t0 = time.time()
    ds = stage_data(cfg)
    vae = stage_vae(cfg, ds)
    latents, scale = stage_latents(cfg, ds, vae)
    stage_classifier(cfg, vae, scale)
    tok = clip_tokenizer()
    unet, te = stage_unet(cfg, ds, latents, vae, scale, tok)
    pipe = assemble(vae, unet, te, tok, scale)
    with atomic_dir(cfg.out, keep=("README.md", "samples.png")) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        portable_text_encoder(os.path.join(tmp, "text_encoder"))
        write_tokenizer_vocab(os.path.join(tmp, "tokenizer"))
        with open(os.path.join(tmp, "concept_edit.json"), "w") as f:
            json.dump(sampler_defaults(SAMPLER_DEFAULTS, cfg), f)
    with open(os.path.join(cfg.work, "train-time.json"), "a") as f:
        f.write(json.dumps({"session_seconds": round(time.time() - t0, 1)}) + "\n")
    return cfg.out
