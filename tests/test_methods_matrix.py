"""The generic method contract over (registered method x family): two training steps (or one
solve), ``run -> Artifact`` leaves the model as it was, save, load, apply, remove equals base
exactly, and the file loads in plain diffusers where diffusers can load it."""
import os
import tempfile

import numpy as np
import pytest
import torch

from concept_edit.core.artifacts import Artifact
from concept_edit.core.model import model_of
from concept_edit.core.sampling import SampleSettings, generate
from concept_edit.methods import METHODS

from conftest import FAMILIES

TINY = {
    "uce": {"edit": ["circle"], "preserve": ["square"]},
    "esd": {"concepts": ["circle"], "iterations": 2, "bank_size": 2, "ddim_steps": 4, "seed": 1},
    "slider": {"prompts": [{"target": "a circle", "positive": "a large circle",
                            "unconditional": "a small circle"}],
               "iterations": 2, "bank_size": 2, "ddim_steps": 4, "seed": 1},
    "sliderspace": {"prompts": ["a circle"], "samples": 4, "components": 2, "iterations": 2, "steps": 2,
                    "sign_samples": 1, "seed": 1,
                    "cache_dir": os.path.join(tempfile.gettempdir(), "concept-edit-test-sliderspace")},
}


def test_every_registered_method_has_a_tiny_config():
    assert sorted(TINY) == METHODS.names()


TOY_MMDIT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "toy-mmdit")


@pytest.mark.parametrize("family", FAMILIES + ("toy-mmdit",))  # the last row: the trained toy MMDiT
@pytest.mark.parametrize("method", sorted(TINY))
def test_method_contract(tiny_pipe, tiny_dirs, family, method, tmp_path):
    if family == "toy-mmdit":
        from concept_edit.core.loading import load_pipeline

        pipe, where, family = load_pipeline(TOY_MMDIT), TOY_MMDIT, "sd3"
    else:
        pipe, where = tiny_pipe(family), tiny_dirs(family)
    model = model_of(pipe)
    m = METHODS.get(method)
    s = SampleSettings(prompt="a circle", n=1, seed=3, steps=2)
    base = generate(pipe, s, progress=False)
    before = {k: v.detach().clone() for k, v in model.denoiser.state_dict().items()}
    art = m.run(model, m.config.from_dict(TINY[method]), progress=False)
    assert isinstance(art, Artifact) and art.meta["method"] == method
    after = model.denoiser.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert np.array_equal(generate(pipe, s, progress=False), base)        # run leaves no edit on
    path = str(tmp_path / f"{method}.safetensors")
    files = art.save(path)  # several edits (sliderspace): a directory of files
    loaded = Artifact.load(path)
    assert loaded.meta == art.meta and loaded.edits[0].tensors.keys() == art.edits[0].tensors.keys()
    h = loaded.apply(pipe, scale=1.0)
    edited = generate(pipe, s, progress=False)
    h.remove()
    assert np.array_equal(generate(pipe, s, progress=False), base)        # remove = base, exactly
    assert edited.shape == base.shape
    _plain_diffusers(where, family, files[0], art.meta["kind"])


def _plain_diffusers(d, family, path, kind):
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    none = {"text_encoder_3": None, "tokenizer_3": None} if d == TOY_MMDIT else {}  # SD3 without T5
    pipe = DiffusionPipeline.from_pretrained(d, **none)
    sd = load_file(path)
    comp = next(iter(sd)).split(".", 1)[0]
    if kind == "weights":
        res = getattr(pipe, comp).load_state_dict({k.split(".", 1)[1]: v for k, v in sd.items()}, strict=False)
        assert not res.unexpected_keys
    elif family != "pixart":  # PixArt has no diffusers LoRA API (peft injection instead)
        pipe.load_lora_weights(path, adapter_name="x")
        assert "x" in pipe.get_active_adapters()
