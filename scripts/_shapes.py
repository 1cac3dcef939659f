"""Real-config-shaped random models for benchmarks (no hub: dimensions from the public configs)."""
from __future__ import annotations

import torch

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
              projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              layers_per_block=2, sample_size=512, scaling_factor=0.18215)


def sd15_pipeline(seed: int = 0):
    """StableDiffusionPipeline with SD1.5's UNet/VAE and CLIP-L's text encoder shapes, random."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from concept_edit.core.tokenizers import clip_tokenizer

    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
        tokenizer=clip_tokenizer(), unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    for c in pipe.components.values():
        if isinstance(c, torch.nn.Module):
            c.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    from concept_edit.core.model import model_of

    model_of(pipe, source="sd15-shaped-random", shipped={"size": 256, "steps": 50, "guidance": 7.5})
    return pipe


WORDS = ("apple banana cherry grape lemon mango orange peach pear plum car truck bus train plane boat "
         "bicycle horse zebra lion tiger bear wolf fox deer eagle owl parrot shark whale dolphin "
         "castle bridge tower church temple house barn tent igloo cabin forest desert beach river "
         "mountain canyon glacier volcano island meadow").split()


def concepts(n: int, offset: int = 0) -> list[str]:
    out = []
    i = offset
    while len(out) < n:
        w = WORDS[i % len(WORDS)]
        out.append(w if i < len(WORDS) else f"{w} {WORDS[(i // len(WORDS)) % len(WORDS)]}")
        i += 1
    return out
