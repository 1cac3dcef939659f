"""Tiny random-init pipelines of every supported family, built offline from configs.

Example::

    >>> from concept_edit.core.tiny import make_tiny, FAMILIES
    >>> pipe = make_tiny("sd3")                     # StableDiffusion3Pipeline, a few MB
    >>> pipe.save_pretrained("/tmp/tiny-sd3")       # reloads with DiffusionPipeline.from_pretrained

They run the real diffusers code paths (tokenizers, text encoders, denoiser, VAE, scheduler) so
that every method and hook is proven on every family without the hub. CLI:
``concept-edit make-tiny FAMILY OUT_DIR``.
"""
from __future__ import annotations

import torch

from .tokenizers import clip_tokenizer, t5_tokenizer

FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux", "pixart")
IMAGE_SIZE = {"sd1": 64, "sd2": 64, "sdxl": 64, "sd3": 64, "flux": 32, "pixart": 64}
TINY_DEFAULTS = {f: {"size": s, "steps": 4, "guidance": 3.5 if f == "flux" else 5.0}
                 for f, s in IMAGE_SIZE.items()}


def _clip_text(hidden: int = 32, projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         projection_dim=hidden, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407, hidden_act="gelu")
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _t5(d_model: int, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    tok = t5_tokenizer()
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                   num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(cfg), tok


def _vae(latent: int = 4, seed: int = 0, **kw):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent, sample_size=64,
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
                         layers_per_block=1, norm_num_groups=8, mid_block_add_attention=False, **kw)


def _unet(cross: int, seed: int = 0, **kw):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=cross,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4), **kw)


def _ddim(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         prediction_type=prediction_type)


def _sd(v_prediction: bool):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=_vae(), text_encoder=_clip_text(), tokenizer=clip_tokenizer(),
        unet=_unet(32, use_linear_projection=v_prediction),
        scheduler=_ddim("v_prediction" if v_prediction else "epsilon"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def _sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    unet = _unet(64, addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=6 * 8 + 32, use_linear_projection=True)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_clip_text(32, seed=0), tokenizer=clip_tokenizer(),
        text_encoder_2=_clip_text(32, projection=True, seed=1), tokenizer_2=clip_tokenizer("!"),
        unet=unet, scheduler=sched, force_zeros_for_empty_prompt=True, add_watermarker=False)


def _sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    t5, t5tok = _t5(64, seed=2)
    torch.manual_seed(3)
    tr = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=4, num_layers=2,
                               attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                               caption_projection_dim=32, pooled_projection_dim=64, out_channels=4,
                               pos_embed_max_size=32)
    return StableDiffusion3Pipeline(
        transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(shift_factor=0.0609, scaling_factor=1.5305),
        text_encoder=_clip_text(32, projection=True, seed=0), tokenizer=clip_tokenizer(),
        text_encoder_2=_clip_text(32, projection=True, seed=1), tokenizer_2=clip_tokenizer("!"),
        text_encoder_3=t5, tokenizer_3=t5tok)


def _flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    t5, t5tok = _t5(32, seed=2)
    torch.manual_seed(3)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=_clip_text(32), tokenizer=clip_tokenizer(), text_encoder_2=t5, tokenizer_2=t5tok,
        transformer=tr)


def _pixart():
    from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

    t5, t5tok = _t5(32, seed=2)
    torch.manual_seed(3)
    tr = PixArtTransformer2DModel(sample_size=32, num_layers=2, patch_size=2, attention_head_dim=8,
                                  num_attention_heads=3, caption_channels=32, in_channels=4,
                                  cross_attention_dim=24, out_channels=8, attention_bias=True,
                                  activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                  norm_type="ada_norm_single", norm_elementwise_affine=False,
                                  norm_eps=1e-6)
    return PixArtAlphaPipeline(tokenizer=t5tok, text_encoder=t5, vae=_vae(), transformer=tr,
                               scheduler=_ddim())


_BUILDERS = {"sd1": lambda: _sd(False), "sd2": lambda: _sd(True), "sdxl": _sdxl, "sd3": _sd3,
             "flux": _flux, "pixart": _pixart}


def make_tiny(family: str, out_dir: str | None = None):
    """Build (and optionally save) a tiny random pipeline of ``family``; components in eval mode."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    pipe = _BUILDERS[family]()
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            comp.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    from .model import model_of

    model_of(pipe, source=f"tiny-{family}", shipped=TINY_DEFAULTS[family])
    if out_dir is not None:
        from .io import atomic_dir

        import json
        import os

        with atomic_dir(out_dir) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            with open(os.path.join(tmp, "concept_edit.json"), "w") as f:
                json.dump(TINY_DEFAULTS[family], f)
    return pipe
