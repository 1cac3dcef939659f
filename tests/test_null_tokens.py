"""The null-token shortcut (SD3 without T5): same images from our sampler and plain diffusers."""
import numpy as np
import torch

from concept_edit.core.null_tokens import null_token_shortcut
from concept_edit.core.sampler import sample


def test_shortcut_is_exact_and_scoped(tiny_pipe):
    pipe = tiny_pipe("sd3")
    pipe.text_encoder_3, pipe.tokenizer_3 = None, None     # SD3 without T5: 256 zero tokens
    procs = dict(pipe.transformer.attn_processors)
    seq = [pipe.encode_prompt("a cat", "a cat", "a cat", do_classifier_free_guidance=False)[0].shape[1]]

    def draw():
        ours = sample(pipe, ["a cat", "a dog"], seed=0, steps=3).images
        ref = pipe("a cat", num_inference_steps=3, guidance_scale=5.0, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
        return ours, ref

    plain = draw()
    with null_token_shortcut(pipe):
        seq.append(pipe.encode_prompt("a cat", "a cat", "a cat", do_classifier_free_guidance=False)[0].shape[1])
        short = draw()
    assert seq == [77 + 256, 77 + 1]
    for a, b in zip(plain, short):
        assert np.abs(a - b).max() < 1e-4
    assert np.abs(plain[0][0] - plain[0][1]).max() > 1e-3            # the prompts differ
    assert dict(pipe.transformer.attn_processors) == procs and "encode_prompt" not in pipe.__dict__


def test_shortcut_does_nothing_where_the_encoder_is_present(tiny_pipe):
    pipe = tiny_pipe("sd3")                                   # with its (tiny) T5
    procs = dict(pipe.transformer.attn_processors)
    with null_token_shortcut(pipe):
        assert dict(pipe.transformer.attn_processors) == procs and "encode_prompt" not in pipe.__dict__
    unet = tiny_pipe("sd1")
    with null_token_shortcut(unet):
        assert "encode_prompt" not in unet.__dict__
