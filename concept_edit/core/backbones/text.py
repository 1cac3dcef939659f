"""Prompt encoding per pipeline kind: prompts -> the denoiser's text keyword inputs.

Example::

    >>> from concept_edit.core.backbones import backbone_of
    >>> cond = backbone_of(pipe).encode(pipe, ["a circle", ""])     # no CFG doubling
    >>> cond = backbone_of(pipe).encode(pipe, prompts, grad=True)   # inversion, prompt attacks

``empty_is_uncond``: encode '' the way the pipeline encodes the CFG unconditional branch (SDXL
with ``force_zeros_for_empty_prompt`` uses zeros there, not the text of '').
``grad=True`` keeps the graph (gradients reach token embeddings and text encoder weights).
"""
from __future__ import annotations

import contextlib

import torch


def _ctx(grad: bool):
    return contextlib.nullcontext() if grad else torch.no_grad()


def encode_sd(pipe, prompts, device, empty_is_uncond=False, grad=False) -> dict:
    with _ctx(grad):
        pe, _ = pipe.encode_prompt(list(prompts), device, 1, False)
    return {"encoder_hidden_states": pe}


def encode_sdxl(pipe, prompts, device, empty_is_uncond=False, grad=False) -> dict:
    prompts = list(prompts)
    with _ctx(grad):
        pe, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    if empty_is_uncond and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        empty = torch.tensor([s == "" for s in prompts], device=pe.device)
        pe = torch.where(empty[:, None, None], torch.zeros_like(pe), pe)
        pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
    return {"encoder_hidden_states": pe, "added_cond_kwargs": {"text_embeds": pooled}}


def encode_sd3(pipe, prompts, device, empty_is_uncond=False, grad=False) -> dict:
    prompts = list(prompts)
    with _ctx(grad):
        pe, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device=device,
                                              do_classifier_free_guidance=False)
    return {"encoder_hidden_states": pe, "pooled_projections": pooled}


def encode_flux(pipe, prompts, device, empty_is_uncond=False, grad=False) -> dict:
    prompts = list(prompts)
    with _ctx(grad):
        pe, pooled, _ = pipe.encode_prompt(prompts, prompts, device=device)
    return {"encoder_hidden_states": pe, "pooled_projections": pooled}


def encode_pixart(pipe, prompts, device, empty_is_uncond=False, grad=False) -> dict:
    with _ctx(grad):
        pe, mask, _, _ = pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                            device=device, clean_caption=False)
    return {"encoder_hidden_states": pe, "encoder_attention_mask": mask}
