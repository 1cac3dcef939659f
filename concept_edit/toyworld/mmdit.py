"""The toy MMDiT: an SD3-style flow-matching model of the toy world (weights/toy-mmdit).

Example (the exact command behind weights/toy-mmdit; resumable: rerun it after an interruption)::

    concept-edit toyworld train --config configs/toyworld/mmdit.yaml

Same renders and classifier as the UNet toy world, and its VAE (reused, with the shift/scale
config SD3 needs); two small CLIP text encoders with projection, on the real CLIP tokenizer; no
T5 (the pipeline then fills the T5 stream with zero tokens); an ``SD3Transformer2DModel``
trained by rectified flow: ``x_s = (1 - s) x0 + s e``, target ``e - x0``, ``s`` logit-normal as
in SD3 (a ``t_uniform`` share uniform: :func:`noise_levels`), timestep ``1000 s``.

An exact shortcut makes training cheaper: plain diffusers feeds 256 zero T5 tokens
(``max_sequence_length``); they are identical in every block (no positions on the text stream),
so training carries one of them and adds ``ln 256`` to its attention logit
(:class:`RepeatedTokenAttn`), the same function as the plain pipeline's (tested). The shipped
pipeline runs plain diffusers code.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.io import atomic_dir, atomic_save_file, load_safetensors
from ..core.null_tokens import RepeatedTokenAttn
from .captions import sample_caption
from .config import sampler_defaults
from .models import LATENT_CHANNELS

T5_ZERO_TOKENS = 256        # StableDiffusion3Pipeline's default max_sequence_length
TEXT_WIDTHS = (64, 32)      # the two CLIP encoders; the joint text width is their sum
# guidance 2: at 5 the unnamed colour and size collapse to one value on many partial prompts
# (9 and 13 of 39 under the 10% floor), at 2 the worst screened prompts hold >= 10% (docs/toy-world.md)
SAMPLER_DEFAULTS = {"size": 64, "steps": 25, "guidance": 2.0, "world": "toy"}


def noise_levels(n: int, g: torch.Generator, t_uniform: float = 0.0) -> torch.Tensor:
    """Training noise levels ``s``: logit-normal(0, 1) as SD3, a ``t_uniform`` share of them uniform
    on [0, 1] instead. Logit-normal draws s > 0.9 1.4% of the time, yet on 16 x 16 latents the
    global colour is settled about there. The extra draws happen only when ``t_uniform`` > 0, so
    0 replays the first-phase recipe exactly."""
    s = torch.sigmoid(torch.randn(n, generator=g))
    if t_uniform:
        u, pick = torch.rand(n, generator=g), torch.rand(n, generator=g) < t_uniform
        s = torch.where(pick, u, s)
    return s


def make_text_encoders():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    out = []
    for w in TEXT_WIDTHS:
        cfg = CLIPTextConfig(vocab_size=49408, hidden_size=w, intermediate_size=4 * w, num_hidden_layers=3,
                             num_attention_heads=2, max_position_embeddings=77, projection_dim=w,
                             bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
        out.append(CLIPTextModelWithProjection(cfg))
    return out


def make_transformer(width: int = 128, layers: int = 4):
    from diffusers import SD3Transformer2DModel

    text = sum(TEXT_WIDTHS)
    return SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=layers,
                                 attention_head_dim=32, num_attention_heads=width // 32, joint_attention_dim=text,
                                 caption_projection_dim=width, pooled_projection_dim=text,
                                 out_channels=LATENT_CHANNELS, pos_embed_max_size=16)


def make_scheduler(shift: float = 1.0):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def encode(te1, te2, ids1: torch.Tensor, ids2: torch.Tensor, zero_tokens: int = 1):
    """The SD3 pipeline's prompt encoding without T5: (context, pooled). ``zero_tokens`` = 1 is
    the training form (with :class:`RepeatedTokenAttn`), 256 the pipeline's."""
    o1 = te1(ids1, output_hidden_states=True)
    o2 = te2(ids2, output_hidden_states=True)
    clip = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], -1)
    zeros = clip.new_zeros(clip.shape[0], zero_tokens, clip.shape[-1])
    return torch.cat([clip, zeros], 1), torch.cat([o1.text_embeds, o2.text_embeds], -1)


def load_base_vae(path: str):
    from diffusers import AutoencoderKL

    if not os.path.isdir(os.path.join(path, "vae")):
        raise FileNotFoundError(f"no vae/ in {path!r}; set base_vae to a toy pipeline directory, "
                                "e.g. weights/toy-world")
    return AutoencoderKL.from_pretrained(path, subfolder="vae").eval()


def assemble(vae, tr, te1, te2, tok1, tok2, shift: float, scale: float, flow_shift: float):
    from diffusers import StableDiffusion3Pipeline

    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    return StableDiffusion3Pipeline(transformer=tr.eval(), scheduler=make_scheduler(flow_shift), vae=vae.eval(),
                                    text_encoder=te1.eval(), tokenizer=tok1, text_encoder_2=te2.eval(),
                                    tokenizer_2=tok2, text_encoder_3=None, tokenizer_3=None)


def load_trained(path: str, mods: dict) -> None:
    """Load a trained toy MMDiT pipeline's transformer and text encoders into ``mods`` (tr, te1, te2)
    in place; a different architecture is a one-line error."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    if not os.path.isdir(os.path.join(path, "transformer")):
        raise FileNotFoundError(f"init_from: no transformer/ in {path!r}; point it at a toy MMDiT pipeline "
                                "directory, e.g. weights/toy-mmdit")
    src = {"tr": SD3Transformer2DModel.from_pretrained(path, subfolder="transformer"),
           "te1": CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder"),
           "te2": CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2")}
    for n, m in mods.items():
        try:
            m.load_state_dict(src[n].state_dict())
        except RuntimeError as e:
            raise ValueError(f"init_from {path!r}: its {n} does not match dit_width/dit_layers of this "
                             f"config ({str(e).splitlines()[0]})") from None


def stage_mmdit(cfg, ds, latents: torch.Tensor, shift: float, scale: float, toks, on_eval=None):
    from .captions import all_prompts
    from .train import _Ckpt, _drops, _gen, _lr, _tokenize_cache

    done = os.path.join(cfg.work, "mmdit-final.safetensors")
    names = ("tr", "te1", "te2")

    def fresh():
        torch.manual_seed(cfg.seed + 2)
        return dict(zip(names, [make_transformer(cfg.dit_width, cfg.dit_layers), *make_text_encoders()]))

    live, ema = fresh(), fresh()
    if os.path.exists(done):
        sd = load_safetensors(done)
        for n, m in ema.items():
            m.load_state_dict({k[len(n) + 1:]: v for k, v in sd.items() if k.startswith(n + ".")})
        return [ema[n].eval() for n in names]
    if cfg.init_from:   # a second phase: live (and, below, the EMA) start from the trained pipeline
        load_trained(cfg.init_from, live)
    for n in names:
        ema[n].load_state_dict(live[n].state_dict())
    embs = [live[n].text_model.embeddings.token_embedding for n in ("te1", "te2")]
    for e in embs:
        e.sparse = True  # the 49,408-row tables: sparse rows + SparseAdam, as the UNet recipe
    params = [p for m in live.values() for p in m.parameters() if all(p is not e.weight for e in embs)]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    sopt = torch.optim.SparseAdam([e.weight for e in embs], lr=cfg.unet_lr)
    ck = _Ckpt(os.path.join(cfg.work, "mmdit-ckpt"))
    start = ck.load({**live, **{"ema_" + n: m for n, m in ema.items()}}, opt, sopt)
    tr, te1, te2 = (live[n].train() for n in names)
    tr.set_attn_processor(RepeatedTokenAttn(T5_ZERO_TOKENS))
    ids = [_tokenize_cache(t, [""] + [p["prompt"] for p in all_prompts()]) for t in toks]
    lat = (latents - shift) * scale
    log = open(os.path.join(cfg.work, "mmdit-log.jsonl"), "a")
    bar = tqdm(range(start, cfg.unet_steps), desc="mmdit", initial=start, total=cfg.unet_steps)
    t0 = time.time()
    for step in bar:
        g = _gen(cfg, 5, step)
        rng = np.random.default_rng(cfg.seed * 7919 + step)
        idx = torch.randint(len(ds), (cfg.unet_batch,), generator=g)
        cap = [sample_caption(ds.scene(int(i)), rng, _drops(cfg)) for i in idx]
        x0 = lat[idx]
        noise = torch.randn(x0.shape, generator=g)
        s = noise_levels(len(x0), g, cfg.t_uniform)
        xs = (1 - s[:, None, None, None]) * x0 + s[:, None, None, None] * noise
        for pg in opt.param_groups + sopt.param_groups:
            pg["lr"] = cfg.unet_lr * _lr(step, cfg.unet_steps, warmup=cfg.warmup)
        ctx, pooled = encode(te1, te2, torch.stack([ids[0][c] for c in cap]), torch.stack([ids[1][c] for c in cap]))
        pred = tr(hidden_states=xs, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=s * 1000).sample
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        sopt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sopt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for n in names:
                torch._foreach_lerp_(list(ema[n].parameters()), list(live[n].parameters()), 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.ckpt_every == 0:
            ck.save(step + 1, {**live, **{"ema_" + n: m for n, m in ema.items()}}, opt, sopt)
        rec = {"step": step + 1, "loss": round(loss.item(), 5), "sec": round(time.time() - t0, 1)}
        if on_eval is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            rec["quick_eval"] = on_eval(*(ema[n].eval() for n in names))
            tqdm.write(json.dumps(rec))
        if (step + 1) % 50 == 0 or "quick_eval" in rec:
            log.write(json.dumps(rec) + "\n")
            log.flush()
    sd = {f"{n}.{k}": v for n, m in ema.items() for k, v in m.state_dict().items()}
    atomic_save_file(sd, done)
    return [ema[n].eval() for n in names]


def run(cfg) -> str:
    from ..core.tokenizers import clip_tokenizer
    from .train import portable_text_encoder, score_pipe, stage_classifier, stage_data, stage_latents
    from .train import stage_vae, write_tokenizer_vocab

    torch.set_num_threads(cfg.threads)
    os.makedirs(cfg.work, exist_ok=True)
    t0 = time.time()
    ds = stage_data(cfg)
    vae = load_base_vae(cfg.base_vae) if cfg.base_vae else stage_vae(cfg, ds)
    latents, _ = stage_latents(cfg, ds, vae)
    shift = float(latents.mean())
    scale = float(1.0 / (latents - shift).std())
    stage_classifier(cfg, vae, scale)
    toks = (clip_tokenizer(), clip_tokenizer("!"))

    def on_eval(tr, te1, te2):
        pipe = assemble(vae, tr, te1, te2, *toks, shift, scale, cfg.flow_shift)
        out = score_pipe(cfg, pipe)
        for m in (tr, te1, te2):
            m.train()
        return out

    tr, te1, te2 = stage_mmdit(cfg, ds, latents, shift, scale, toks, on_eval)
    pipe = assemble(vae, tr, te1, te2, *toks, shift, scale, cfg.flow_shift)
    with atomic_dir(cfg.out, keep=("README.md", "samples.png")) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for sub in ("text_encoder", "text_encoder_2"):
            portable_text_encoder(os.path.join(tmp, sub))
        for sub in ("tokenizer", "tokenizer_2"):  # vocab + merges only: loads the same, 7 MB less
            write_tokenizer_vocab(os.path.join(tmp, sub))
            os.remove(os.path.join(tmp, sub, "tokenizer.json"))
        with open(os.path.join(tmp, "concept_edit.json"), "w") as f:
            json.dump(sampler_defaults(SAMPLER_DEFAULTS, cfg), f)
    with open(os.path.join(cfg.work, "train-time.json"), "a") as f:
        f.write(json.dumps({"session_seconds": round(time.time() - t0, 1)}) + "\n")
    return cfg.out
