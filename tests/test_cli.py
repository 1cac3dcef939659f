"""The CLI: generate determinism and manifest, sites, bad input -> one-line errors, no output."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from concept_edit.cli.main import main

from conftest import FAMILIES


def run(argv, capsys):
    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_and_generate_every_family(tiny_dirs, family, tmp_path, capsys):
    d = tiny_dirs(family)
    code, out, _ = run(["sites", d, "--json"], capsys)
    table = json.loads(out)
    assert code == 0 and table["family"] == family and table["groups"]["text_kv"]
    assert all(len(r["shape"]) == 2 for r in table["groups"]["text_kv"])
    o1, o2 = str(tmp_path / "a"), str(tmp_path / "b")
    for o in (o1, o2):
        code, _, err = run(["generate", "--model", d, "--prompt", "a red circle", "--n", "2",
                            "--seed", "7", "--out", o], capsys)
        assert code == 0, err
    for name in ("000.png", "001.png"):
        assert open(os.path.join(o1, name), "rb").read() == open(os.path.join(o2, name), "rb").read()
    m = json.load(open(os.path.join(o1, "manifest.json")))
    assert m["seeds"] == [7, 8] and m["family"] == family and m["model"] == os.path.basename(d)
    assert tmp_path.parts[1] not in json.dumps(m)  # no absolute local path in a manifest
    assert {"steps", "guidance", "guidance_below", "height", "width", "scheduler", "applied"} <= set(m)
    assert m["guidance_below"] == 1.0   # the tiny models ship no guidance interval: every step guided


def test_generate_applies_artifacts_with_sha(tiny_dirs, tmp_path, capsys):
    d = tiny_dirs("sd1")
    art = str(tmp_path / "u.safetensors")
    assert run(["uce", "--model", d, "--erase", "circle", "--preserve", "square", "--out", art], capsys)[0] == 0
    out = str(tmp_path / "g")
    code, _, err = run(["generate", "--model", d, "--prompt", "a circle", "--n", "1", "--apply",
                        art + "@0.5", "--out", out], capsys)
    assert code == 0, err
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["applied"][0]["scale"] == 0.5 and len(m["applied"][0]["sha256"]) == 64


def _bad(tmp_path, tiny_dirs):
    d = tiny_dirs("sd1")
    pickled = tmp_path / "model.ckpt"
    torch.save({"w": torch.zeros(1)}, pickled)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, str(foreign))
    fake_pickle = tmp_path / "edit.safetensors"
    torch.save({"w": torch.zeros(1)}, fake_pickle)
    png = tmp_path / "renamed.safetensors"
    png.write_bytes(open(os.path.join(os.path.dirname(__file__), "..", "weights", "toy-world", "samples.png"), "rb").read())
    out = str(tmp_path / "o")
    return out, [
        (["make-tiny", "sd9", out], "unknown family"),
        (["generate", "--model", str(tmp_path / "nope"), "--prompt", "x", "--out", out], "does not exist"),
        (["generate", "--model", str(pickled), "--prompt", "x", "--out", out], "pickled"),
        (["generate", "--model", d, "--prompt", "x", "--size", "63x64", "--out", out], "--size"),
        (["generate", "--model", d, "--prompt", "x", "--size", "big", "--out", out], "--size"),
        (["generate", "--model", d, "--prompt", "x", "--size", "0x0", "--out", out], "positive"),
        (["generate", "--model", str(png), "--prompt", "x", "--out", out], "not a safetensors file"),
        (["generate", "--model", d, "--prompt", "x", "--apply", str(png), "--out", out], "not a safetensors file"),
        (["uce", "--model", d, "--erase", "circle", "--set", "lamb", "--out", out + ".safetensors"], "KEY=VALUE"),
        (["uce", "--model", d, "--erase", "circle", "--set", "lambda=1", "--out", out + ".safetensors"], "did you mean"),
        (["slider", "grid", "--model", d, "--apply", str(png), "--prompt", "x", "--out", out + ".png"], "not a safetensors"),
        (["generate", "--model", d, "--prompt", "x", "--steps", "0", "--out", out], "--steps"),
        (["generate", "--model", d, "--prompt", "x", "--guidance-below", "0", "--out", out], "--guidance-below"),
        (["generate", "--model", d, "--prompt", "x", "--apply", str(foreign), "--out", out], "not written by concept_edit"),
        (["generate", "--model", d, "--prompt", "x", "--apply", str(fake_pickle), "--out", out], "pickled"),
        (["generate", "--model", d, "--prompt", "x", "--apply", "missing.safetensors", "--out", out], "no such file"),
        (["uce", "--model", d, "--erase", "circle", "--token-policy", "last", "--lamb", "-1", "--out", out + ".safetensors"], "lamb"),
        (["slider", "train", os.path.join(os.path.dirname(__file__), "..", "configs", "sliders", "toy-size-pairs.yaml"),
          "--model", d, "--set", f"image_pairs={{low: {tmp_path}/no/low, high: {tmp_path}/no/high}}",
          "--iterations", "1", "--out", out + ".safetensors"], "render-pairs"),
    ]


def test_bad_input_one_line_no_output(tiny_dirs, tmp_path, capsys):
    out, cases = _bad(tmp_path, tiny_dirs)
    for argv, needle in cases:
        code, _, err = run(argv, capsys)
        assert code != 0, argv
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert lines and needle in lines[-1], (argv, err)
        assert len([line for line in lines if "error" in line]) == 1, err
        assert not os.path.exists(out) and not os.path.exists(out + ".safetensors"), argv
        assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")], argv


def test_artifact_for_other_model_refused(tiny_dirs, tmp_path, capsys):
    art = str(tmp_path / "u.safetensors")
    assert run(["uce", "--model", tiny_dirs("sd1"), "--erase", "circle", "--out", art], capsys)[0] == 0
    out = str(tmp_path / "o")
    code, _, err = run(["generate", "--model", tiny_dirs("sdxl"), "--prompt", "x", "--apply", art,
                        "--out", out], capsys)
    assert code != 0 and "sd1" in err and not os.path.exists(out)


def test_layer_typos_in_sites(tiny_dirs, capsys):
    from concept_edit.core.loading import load_pipeline
    from concept_edit.core.paths import SiteError, get_module

    pipe = load_pipeline(tiny_dirs("sd1"))
    with pytest.raises(SiteError, match="nearest"):
        get_module(pipe.unet, "mid_block.attentions.0.transformer_blocks.0.attn3")


def test_render_pairs_captions(tmp_path, capsys):
    """render-pairs: matching small/large files, captions without the size word, one per line
    (full, without colour, without background, shape only); --single-caption writes the first."""
    from concept_edit.toyworld.render import COLOUR_NAMES, SIZE_NAMES

    code, _, _ = run(["toyworld", "render-pairs", str(tmp_path / "p"), "--n", "3"], capsys)
    assert code == 0
    low, high = tmp_path / "p" / "low", tmp_path / "p" / "high"
    assert sorted(f.name for f in low.glob("*.png")) == sorted(f.name for f in high.glob("*.png"))
    lines = (low / "0000.txt").read_text().splitlines()
    assert len(lines) == 4 and " background" in lines[0] and " background" not in lines[2]
    assert any(c in lines[0].split() for c in COLOUR_NAMES)
    assert not any(c in lines[1].split() for c in COLOUR_NAMES)
    assert not any(s in line.split() for line in lines for s in SIZE_NAMES)
    code, _, _ = run(["toyworld", "render-pairs", str(tmp_path / "q"), "--n", "1", "--single-caption"], capsys)
    assert code == 0                                     # same seed: the same first scene
    assert (tmp_path / "q" / "low" / "0000.txt").read_text().splitlines() == lines[:1]


def test_every_command_has_help_with_examples(capsys):
    """--help of every (sub)command answers with exit 0, defaults shown and an example."""
    cmds = [["generate"], ["sites"], ["make-tiny"], ["uce"], ["esd"], ["slider", "train"], ["slider", "grid"],
            ["slider", "export"], ["toyworld", "train"], ["toyworld", "score"], ["toyworld", "evaluate"],
            ["toyworld", "render"], ["toyworld", "erasure"], ["toyworld", "slider"], ["toyworld", "render-pairs"]]
    for c in cmds:
        code, out, _ = run(c + ["--help"], capsys)
        assert code == 0 and "examples:" in out, c
    code, out, _ = run(["uce", "--help"], capsys)
    assert "(default: 0.5)" in out and "--lamb" in out          # generated from UceConfig.lamb
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and "concept-edit" in out


def test_slider_grid_refuses_a_weights_edit_first(tiny_dirs, tmp_path, capsys):
    d = tiny_dirs("sd1")
    art = str(tmp_path / "u.safetensors")
    assert run(["uce", "--model", d, "--erase", "circle", "--out", art], capsys)[0] == 0
    code, _, err = run(["slider", "grid", "--model", d, "--apply", art, "--prompt", "x",
                        "--out", str(tmp_path / "g.png")], capsys)
    assert code == 2 and "not a slider" in err and len(err.strip().splitlines()) == 1
