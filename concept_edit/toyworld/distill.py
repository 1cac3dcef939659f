"""Distil the toy world into a 4-step student (weights/toy-turbo) by distribution matching (DMD2).

Example (the exact command behind weights/toy-turbo; resumable: rerun it after an interruption)::

    concept-edit toyworld distill --work .cache/toy-turbo --out weights/toy-turbo

Why distribution matching: the diversity-distillation paper studies what the mode-seeking
objectives of DMD/DMD2-style students do to diversity; the reverse-KL gradient of DMD, taken with
classifier-free guidance on the real score, is that objective, and it needs no data and no
discriminator (adversarial training of a 6 MB UNet on 2 CPU cores would be the fragile part).

Per generator update (DMD2 without its GAN term, with the two time-scale rule):
1. a student timestep t_i from ``timesteps``; its input is made by backward simulation: the
   student itself runs from pure noise through the earlier steps (DDIM, eta 0: the sampler it
   ships with), without gradients;
2. the student predicts x0 at t_i; x0 is noised to a random t in [min_t, max_t]; the frozen base
   (with CFG ``real_guidance``) and the fake score (trained on the student's outputs) each
   predict x0; the student moves along (fake - real), normalised per image by |x0 - real|;
3. the fake score gets ``fake_updates`` denoising steps on fresh student samples.
The student and the fake score both start from the base UNet. The VAE, text encoder, tokenizer
are the base's files, copied unchanged; the student's scheduler is DDIM with trailing spacing,
so ``pipe(num_inference_steps=4, guidance_scale=0)`` lands exactly on 999/749/499/249.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.io import atomic_dir, atomic_path, atomic_save_file, load_safetensors

STUDENT_DEFAULTS = {"size": 64, "steps": 4, "guidance": 0.0, "timesteps": [999, 749, 499, 249], "world": "toy"}


def _gen(cfg, stage: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + stage * 10_007 + step)


class Teacher:
    """The frozen base: UNet, text encodings of every grammar caption, the noise schedule."""

    def __init__(self, base: str):
        from ..core.loading import load_pipeline
        from .captions import all_prompts

        self.pipe = load_pipeline(base)
        self.unet = self.pipe.unet.eval().requires_grad_(False)
        caps = [""] + [p["prompt"] for p in all_prompts()]
        with torch.no_grad():
            ids = self.pipe.tokenizer(caps, padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                      truncation=True, return_tensors="pt").input_ids
            emb = self.pipe.text_encoder(ids)[0]
        self.emb = dict(zip(caps, emb))
        self.ac = self.pipe.scheduler.alphas_cumprod.float()

    def encode(self, captions: list[str]) -> torch.Tensor:
        return torch.stack([self.emb[c] for c in captions])

    def x0(self, xt, eps, t):
        a = self.ac[t].view(-1, 1, 1, 1)
        return (xt - (1 - a).sqrt() * eps) / a.sqrt()

    def noise(self, x0, n, t):
        a = self.ac[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * n


def _captions(cfg, step: int, n: int) -> list[str]:
    from .captions import sample_caption
    from .render import sample_scene

    rng = np.random.default_rng(cfg.seed * 7919 + step)
    return [sample_caption(sample_scene(rng=rng), rng) for _ in range(n)]


def student_x0(teacher, student, z, k, cond, ts, grad: bool):
    """Run the student from noise ``z`` through steps 0..k-1 (DDIM, eta 0, no grad), then
    predict x0 at step k (with grad when asked). Returns (x0 at step k, x_t at step k)."""
    x = z
    for j in range(k + 1):
        t = torch.full((len(x),), ts[j], dtype=torch.long)
        with torch.set_grad_enabled(grad and j == k):
            eps = student(x, t, encoder_hidden_states=cond).sample
        x0 = teacher.x0(x, eps, t)
        if j == k:
            return x0, x
        a_next = teacher.ac[ts[j + 1]]
        x = (a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps).detach()


def _fake_loss(teacher, fake, x0, cond, g):
    t = torch.randint(0, 1000, (len(x0),), generator=g)
    n = torch.randn(x0.shape, generator=g)
    return F.mse_loss(fake(teacher.noise(x0, n, t), t, encoder_hidden_states=cond).sample, n)


def _dmd_loss(cfg, teacher, fake, x0, cond, uncond, g):
    t = torch.randint(cfg.min_t, cfg.max_t + 1, (len(x0),), generator=g)
    n = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        xt = teacher.noise(x0, n, t)
        e = teacher.unet(torch.cat([xt, xt]), torch.cat([t, t]),
                         encoder_hidden_states=torch.cat([uncond, cond])).sample
        eu, ec = e.chunk(2)
        real = teacher.x0(xt, eu + cfg.real_guidance * (ec - eu), t)
        fk = teacher.x0(xt, fake(xt, t, encoder_hidden_states=cond).sample, t)
        w = (x0 - real).abs().mean((1, 2, 3), keepdim=True).clamp(min=1e-4)
        grad = torch.nan_to_num((fk - real) / w)
    return 0.5 * F.mse_loss(x0, (x0 - grad).detach())


def _save(path, step, gen, fake, gopt, fopt):
    sd = {f"gen.{k}": v for k, v in gen.state_dict().items()}
    sd.update({f"fake.{k}": v for k, v in fake.state_dict().items()})
    atomic_save_file(sd, path + ".safetensors", metadata={"step": str(step)})
    with atomic_path(path + ".opt.pt") as tmp:
        torch.save({"gopt": gopt.state_dict(), "fopt": fopt.state_dict(), "step": step}, tmp)


def _load(path, gen, fake, gopt, fopt) -> int:
    if not os.path.exists(path + ".opt.pt"):
        return 0
    sd = load_safetensors(path + ".safetensors")
    gen.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("gen.")})
    fake.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("fake.")})
    st = torch.load(path + ".opt.pt", weights_only=True)
    gopt.load_state_dict(st["gopt"])
    fopt.load_state_dict(st["fopt"])
    return int(st["step"])


@torch.no_grad()
def quick_eval(teacher, student, ts, n: int = 96, seed: int = 123) -> dict:
    """Full-prompt fidelity (toy classifier) and the shape entropy of 'a red shape'-style partial
    prompts, 4 student steps, decoded through the base VAE."""
    from .captions import caption
    from .classifier import load_classifier, predict
    from .render import SHAPES, sample_scene

    clf = load_classifier()
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng=rng) for _ in range(n)]
    full = [caption(s.shape, s.colour, s.size, s.background) for s in scenes]
    partial = ["a red " + SHAPES[i % len(SHAPES)] for i in range(n)]  # shape named, size/bg free
    out = {}
    for name, caps in (("full", full), ("partial", partial)):
        z = torch.randn((n, 4, 16, 16), generator=torch.Generator().manual_seed(seed))
        x0, _ = student_x0(teacher, student, z, len(ts) - 1, teacher.encode(caps), ts, grad=False)
        img = teacher.pipe.vae.decode(x0 / teacher.pipe.vae.config.scaling_factor).sample
        img = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        preds = predict(clf, img)
        if name == "full":
            for k in ("shape", "colour", "size", "background"):
                out[k] = round(float(np.mean([p[k] == getattr(s, k) for p, s in zip(preds, scenes)])), 3)
        else:
            out["partial_size_entropy"] = round(entropy([p["size"] for p in preds]), 3)
            out["partial_bg_entropy"] = round(entropy([p["background"] for p in preds]), 3)
    return out


def entropy(values) -> float:
    """Entropy (bits) of a list of labels."""
    _, c = np.unique(np.asarray(values), return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def save_student(cfg, student) -> str:
    """The base pipeline's files with the student UNet, a trailing-spacing DDIM scheduler and
    the student's sampler defaults (4 steps, no CFG)."""
    from diffusers import DDIMScheduler

    with atomic_dir(cfg.out, keep=("README.md", "samples.png")) as tmp:
        for sub in ("vae", "text_encoder", "tokenizer"):
            shutil.copytree(os.path.join(cfg.base, sub), os.path.join(tmp, sub))
        shutil.copy(os.path.join(cfg.base, "model_index.json"), tmp)
        student.save_pretrained(os.path.join(tmp, "unet"), safe_serialization=True)
        sched = DDIMScheduler.from_pretrained(os.path.join(cfg.base, "scheduler"))
        DDIMScheduler.from_config(sched.config, timestep_spacing="trailing", steps_offset=0).save_pretrained(
            os.path.join(tmp, "scheduler"))
        with open(os.path.join(tmp, "concept_edit.json"), "w") as f:
            json.dump({**STUDENT_DEFAULTS, "timesteps": [int(t) for t in cfg.timesteps],
                       "distilled_from": "toy-world", "recipe": cfg.to_dict()}, f)
    return cfg.out


def run(cfg) -> str:
    """Train (or resume) the student and save it to ``cfg.out``."""
    torch.set_num_threads(cfg.threads)
    os.makedirs(cfg.work, exist_ok=True)
    teacher = Teacher(cfg.base)
    torch.manual_seed(cfg.seed)
    student = type(teacher.unet).from_config(teacher.unet.config)
    student.load_state_dict(teacher.unet.state_dict())
    fake = type(teacher.unet).from_config(teacher.unet.config)
    fake.load_state_dict(teacher.unet.state_dict())
    gopt = torch.optim.AdamW(student.parameters(), lr=cfg.gen_lr, weight_decay=0.0)
    fopt = torch.optim.AdamW(fake.parameters(), lr=cfg.fake_lr, weight_decay=0.0)
    ck = os.path.join(cfg.work, "ckpt")
    start = _load(ck, student, fake, gopt, fopt)
    student.train().requires_grad_(True)
    fake.train().requires_grad_(True)
    ts = [int(t) for t in cfg.timesteps]
    uncond1 = teacher.encode([""])
    log = open(os.path.join(cfg.work, "log.jsonl"), "a")
    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), desc="distill", initial=start, total=cfg.steps)
    for step in bar:
        g = _gen(cfg, 5, step)
        for f in range(cfg.fake_updates):  # fake score tracks the student's current outputs
            caps = _captions(cfg, step * 100 + f + 1, cfg.batch)
            cond = teacher.encode(caps)
            k = int(torch.randint(len(ts), (1,), generator=g))
            with torch.no_grad():
                x0, _ = student_x0(teacher, student, torch.randn((cfg.batch, 4, 16, 16), generator=g), k,
                                   cond, ts, grad=False)
            fl = _fake_loss(teacher, fake, x0, cond, g)
            fopt.zero_grad(set_to_none=True)
            fl.backward()
            torch.nn.utils.clip_grad_norm_(fake.parameters(), 1.0)
            fopt.step()
        caps = _captions(cfg, step * 100, cfg.batch)
        cond = teacher.encode(caps)
        k = int(torch.randint(len(ts), (1,), generator=g))
        x0, _ = student_x0(teacher, student, torch.randn((cfg.batch, 4, 16, 16), generator=g), k, cond, ts,
                           grad=True)
        loss = _dmd_loss(cfg, teacher, fake, x0, cond, uncond1.expand(len(caps), -1, -1), g)
        gopt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        gopt.step()
        bar.set_postfix(dmd=f"{loss.item():.4f}", fake=f"{fl.item():.4f}")
        rec = {"step": step + 1, "dmd": round(loss.item(), 5), "fake": round(fl.item(), 5),
               "sec": round(time.time() - t0, 1)}
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            _save(ck, step + 1, student, fake, gopt, fopt)
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            student.eval()
            rec["quick_eval"] = quick_eval(teacher, student, ts)
            student.train()
            atomic_save_file(student.state_dict(), os.path.join(cfg.work, f"student-{step + 1}.safetensors"))
            tqdm.write(json.dumps(rec))
        if (step + 1) % 10 == 0 or "quick_eval" in rec or step + 1 == cfg.steps:
            log.write(json.dumps(rec) + "\n")
            log.flush()
    return save_student(cfg, student.eval())
