"""The toy CLIP: the shipped weights load through open_clip offline and classify fresh renders;
registration is idempotent; a tiny training run checkpoints, exports and resumes."""
import json
import os

import numpy as np
import pytest

from concept_edit.toyworld.clip import (ATTRIBUTES, DEFAULT_DIR, ToyClipConfig, embed_images, embed_texts,
                                        load_toy_clip, register, zero_shot)
from concept_edit.toyworld.clip_train import batch_captions, match_matrix, train_toy_clip
from concept_edit.toyworld.dataset import build

shipped = pytest.mark.skipif(not os.path.exists(os.path.join(DEFAULT_DIR, "open_clip_model.safetensors")),
                             reason="weights/toy-clip not built")


@shipped
def test_shipped_toy_clip_classifies_fresh_renders():
    import open_clip

    clip = load_toy_clip()
    ds = build(32, seed=31_337)                        # seeds far from training (5,000) and eval
    truth = {"shape": ds.shape, "colour": ds.colour, "size": ds.size, "background": ds.background}
    for attr, vocab in ATTRIBUTES.items():
        pred = zero_shot(ds.images, attr, clip)
        acc = np.mean([vocab.index(p) == t for p, t in zip(pred, truth[attr])])
        assert acc >= 0.9, (attr, acc)
    assert zero_shot(ds.images[:4], "colour", clip, values=["red", "blue"])[0] in ("red", "blue")
    f, t = embed_images(ds.images[:3], clip), embed_texts(["a red circle", "a star"], clip)
    assert f.shape == (3, t.shape[1]) and np.allclose(f.norm(dim=-1).numpy(), 1, atol=1e-4)

    # plain open_clip, both ways: registered name + pretrained file, and local-dir
    name = register()
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=os.path.join(DEFAULT_DIR, "open_clip_model.safetensors"))
    model2, _, _ = open_clip.create_model_and_transforms("local-dir:" + DEFAULT_DIR)
    tok = open_clip.get_tokenizer(name)
    from PIL import Image

    x = preprocess(Image.fromarray(ds.images[0]))[None]
    a = model.eval().encode_image(x, normalize=True)
    b = model2.eval().encode_image(x, normalize=True)
    assert np.allclose(a.detach().numpy(), f[:1].numpy(), atol=1e-5)
    assert np.allclose(a.detach().numpy(), b.detach().numpy(), atol=1e-5)
    assert tok(["a red circle"]).shape[1] == model.context_length


@shipped
def test_registration_is_idempotent():
    import open_clip

    with open(os.path.join(DEFAULT_DIR, register() + ".json")) as f:
        cfg = json.load(f)
    names = [register(), register()]
    assert names[0] == names[1] == "toy-clip"
    assert open_clip.list_models().count("toy-clip") == 1
    assert open_clip.get_model_config("toy-clip") == cfg


def test_multi_positive_targets():
    labels = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 2]])      # shape, colour, size, bg
    caps, named = batch_captions(labels, np.random.default_rng(0), p_drop=1.0, hard_negatives=True)
    assert "a circle" in caps and "a square" in caps                     # everything dropped
    m = match_matrix(labels, named).numpy()
    circle = caps.index("a circle")
    assert m[:, circle].tolist() == [True, True, False]                 # two positives
    assert m.any(1).all()


def test_tiny_training_checkpoints_and_resumes(tmp_path):
    cfg = ToyClipConfig(name="toy-clip-smoke", steps=3, batch=16, n_renders=64, n_recon=0, sample_seeds=0,
                        ckpt_every=2, eval_every=0, vision_width=8, text_width=32, embed_dim=32,
                        context_length=16)
    out, work = str(tmp_path / "out"), str(tmp_path / "work")
    train_toy_clip(cfg, out, work, resume=False, progress=False)
    assert sorted(os.listdir(out)) == ["open_clip_config.json", "open_clip_model.safetensors",
                                       "toy-clip-smoke.json"]
    clip = load_toy_clip(out)
    assert len(zero_shot(build(4, seed=1).images, "shape", clip)) == 4
    train_toy_clip(cfg.replace(steps=4), out, work, progress=False)      # resumes at step 3
    with open(os.path.join(work, "toy-clip-smoke-log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    starts = [r["step"] for r in log if r.get("event") == "start"]
    assert starts == [0, 3]
    with pytest.raises(ValueError, match="other settings"):
        train_toy_clip(cfg.replace(steps=5, lr=1.0), out, work, progress=False)
