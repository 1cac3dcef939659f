"""The toy world: renderer, grammar, classifier, the shipped pipeline, `toyworld score`."""
import json
import os

import numpy as np
import pytest

from concept_edit.toyworld.captions import all_prompts, caption, parse, sample_caption
from concept_edit.toyworld.render import COLOURS, SIZES, render, sample_scene

from conftest import TOY


def test_renderer_deterministic_and_labelled():
    a, b = sample_scene(seed=3), sample_scene(seed=3)
    assert a == b and np.array_equal(render(a), render(b))
    for seed in range(40):
        s = sample_scene(seed=seed)
        img = render(s)
        lo, hi = SIZES[s.size]
        assert lo <= s.radius <= hi
        centre = img[int(s.cy), int(s.cx)]
        assert tuple(centre) == COLOURS[s.colour], (s, centre)
        corner = img[0, 0]
        assert corner[0] == corner[1] == corner[2]          # achromatic background
    plain = render(sample_scene(seed=1, background="plain", shape="circle", radius=9.0))
    assert (plain[:2, :2] == 235).all()
    striped = render(sample_scene(seed=1, background="striped", shape="circle", radius=9.0))
    assert (striped[4, :8] == 140).all() and (striped[0, :8] == 235).all()


def test_caption_grammar():
    prompts = all_prompts()
    assert len(prompts) == 3 * 5 * 4 * 4 and len({p["prompt"] for p in prompts}) == len(prompts)
    assert caption("circle", "red") == "a red circle"
    assert parse("a large star on a dotted background") == {"size": "large", "shape": "star",
                                                             "background": "dotted"}
    with pytest.raises(ValueError, match="not a v1"):
        parse("a purple circle")
    rng = np.random.default_rng(0)
    s = sample_scene(seed=0)
    caps = [sample_caption(s, rng) for _ in range(4000)]
    assert 0.07 < np.mean([c == "" for c in caps]) < 0.13
    full = s.caption()
    assert 0.4 < np.mean([c == full for c in caps]) < 0.55          # 0.9 * 0.8^3 ~ 0.46
    assert all(c == "" or parse(c)["shape"] == s.shape for c in caps)


def test_classifier_on_fresh_renders():
    from concept_edit.toyworld.classifier import load_classifier
    from concept_edit.toyworld.evaluate import classifier_report

    rep = classifier_report(load_classifier(), n=300, seed=4242)
    for k in ("shape", "colour", "size", "background"):
        assert rep[k] >= 0.98, rep
    assert rep["radius_mae_px"] < 1.5


def test_score_cli_on_renders(tmp_path, capsys):
    from concept_edit.cli.main import main

    d = str(tmp_path / "r")
    main(["toyworld", "render", d, "--n", "12", "--fix", "shape=star", "--fix", "colour=blue"])
    capsys.readouterr()
    main(["toyworld", "score", d, "--expect", "shape=star", "--expect", "colour=blue", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rep["rates"] == {"shape": 1.0, "colour": 1.0} and rep["n"] == 12
    labels = json.load(open(os.path.join(d, "labels.json")))
    sizes = [p["size"] for p in rep["images"]]
    assert sizes == [lab["size"] for lab in labels]


def test_score_bad_input(tmp_path, capsys):
    from concept_edit.cli.main import main

    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_text("not an image")
    for d, needle in ((empty, "holds no images"), (junk, "is not an image"), (tmp_path / "nope", "not a directory")):
        with pytest.raises(SystemExit) as e:
            main(["toyworld", "score", str(d)])
        assert e.value.code != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0]


def test_shipped_pipeline_loads_offline_and_generates():
    from diffusers import StableDiffusionPipeline

    assert os.path.exists(os.path.join(TOY, "model_index.json")), "weights/toy-world must ship"
    pipe = StableDiffusionPipeline.from_pretrained(TOY)   # plain diffusers, offline
    pipe.set_progress_bar_config(disable=True)
    import torch

    img = pipe("a red circle", num_inference_steps=5, guidance_scale=5.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 64, 64, 3) and 0.0 <= img.min() and img.max() <= 1.0
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(TOY) for f in fs)
    assert size <= 40 * 2 ** 20
    assert not [f for _, _, fs in os.walk(TOY) for f in fs if f.endswith((".bin", ".ckpt", ".pt"))]


def test_erasure_and_slider_reports_run(tiny_dirs, tmp_path, capsys):
    """The evaluation commands work end to end (on a tiny model: the numbers are meaningless)."""
    from concept_edit.cli.main import main

    d = tiny_dirs("sd1")
    art = str(tmp_path / "u.safetensors")
    main(["uce", "--model", d, "--erase", "circle", "--out", art])
    capsys.readouterr()
    main(["toyworld", "erasure", "--model", d, "--concept", "shape=circle", "--apply", art, "--seeds", "1"])
    rep = json.loads(capsys.readouterr().out)
    assert set(rep["target"]) == {"base", "edited"} and "keep_ratio" in rep["others"]
    cfg = tmp_path / "s.yaml"
    cfg.write_text("prompts:\n  - {target: 'a circle', positive: 'a large circle', unconditional: 'a small circle'}\n"
                   "iterations: 2\nbank_size: 2\nddim_steps: 4\n")
    sl = str(tmp_path / "s.safetensors")
    main(["slider", "train", str(cfg), "--model", d, "--out", sl])
    capsys.readouterr()
    main(["toyworld", "slider", "--model", d, "--apply", sl, "--scales", "-1,0,1", "--seeds", "1"])
    rep = json.loads(capsys.readouterr().out)
    rho = rep["spearman"]
    assert set(rep["mean"]) == {"-1.0", "0.0", "1.0"} and (rho != rho or -1 <= rho <= 1)


def test_ensure_size_pairs_renders_the_shipped_pairs_once(tmp_path, monkeypatch):
    from concept_edit.toyworld.pairs import ensure_size_pairs

    monkeypatch.chdir(tmp_path)
    assert not ensure_size_pairs("elsewhere/low") and not os.path.exists("data")  # not ours: untouched
    assert ensure_size_pairs() and len(os.listdir("data/size-pairs/high")) == 64
    assert len([f for f in os.listdir("data/size-pairs/low") if f.endswith(".txt")]) == 64
    assert not ensure_size_pairs("data/size-pairs/low")  # already there: not rendered again
