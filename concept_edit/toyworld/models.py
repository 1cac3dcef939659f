"""Architectures of the toy-world model and its classifier (configs only, random init).

Example::

    >>> from concept_edit.toyworld.models import make_vae, make_unet, make_text_encoder
    >>> vae, unet, te = make_vae(), make_unet(), make_text_encoder()
    >>> sum(p.numel() for p in unet.parameters()) < 5e6
    True
"""
from __future__ import annotations

import torch
from torch import nn

LATENT_CHANNELS = 4
TEXT_WIDTH = 96


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
        mid_block_add_attention=False)


def make_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH,
                         num_hidden_layers=2, num_attention_heads=3, max_position_embeddings=77,
                         projection_dim=TEXT_WIDTH, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407)
    return CLIPTextModel(cfg)


def make_unet(width: int = 32):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(width, 2 * width, 2 * width), layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=(1, 2, 2), norm_num_groups=8)


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1, prediction_type="epsilon")


class ToyClassifier(nn.Module):
    """Small CNN: shape (4 + none), colour, size, background logits and radius/centre in px."""

    HEADS = {"shape": 5, "colour": 4, "size": 2, "background": 3}

    def __init__(self, width: int = 32):
        super().__init__()
        w = width

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                 nn.BatchNorm2d(cout), nn.SiLU())

        self.body = nn.Sequential(block(3, w, 2), block(w, w, 1), block(w, 2 * w, 2),
                                  block(2 * w, 2 * w, 1), block(2 * w, 4 * w, 2),
                                  block(4 * w, 4 * w, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.heads = nn.ModuleDict({k: nn.Linear(4 * w, n) for k, n in self.HEADS.items()})
        self.regress = nn.Linear(4 * w, 3)  # radius, cx, cy (px / 64)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: (N, 3, 64, 64) in [-1, 1]."""
        h = self.pool(self.body(x)).flatten(1)
        out = {k: head(h) for k, head in self.heads.items()}
        reg = self.regress(h) * 64.0
        out["radius"], out["cx"], out["cy"] = reg[:, 0], reg[:, 1], reg[:, 2]
        return out
