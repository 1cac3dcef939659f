"""SliderSpace on a tiny family: PCA from the cache, frozen orthonormal up vectors, the batched
(masked) sliders equal the saved rank-1 files, the loss falls, scale 0 = base, files load in
plain diffusers and the CLI, the cache is reused, bad input is one line with nothing in OUT."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from concept_edit.cli.main import main
from concept_edit.core.artifacts import apply_artifact
from concept_edit.core.config import ConfigError
from concept_edit.core.io import load_safetensors
from concept_edit.core.lora import lora_router
from concept_edit.core.model import model_of
from concept_edit.core.sampling import SampleSettings, generate
from concept_edit.methods.sliderspace import SliderSpaceConfig, discover
from concept_edit.methods.sliderspace.method import _Trainer, resolve_sites, up_vectors
from concept_edit.methods.sliderspace.pca import pca, project
from concept_edit.scorers import get_embedder

FAMILY = "sd1"


def _cfg(cache, **kw):
    d = dict(prompts=["a circle", "a square"], samples=8, components=3, iterations=3, steps=2,
             sign_samples=2, cache_dir=str(cache), seed=1)
    d.update(kw)
    return SliderSpaceConfig.from_dict(d)


def run_cli(argv, capsys):
    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def first(tiny_dirs, tmp_path_factory):
    from concept_edit.core.loading import load_pipeline

    root = tmp_path_factory.mktemp("ss")
    pipe = load_pipeline(tiny_dirs(FAMILY))
    res = discover(model_of(pipe), _cfg(root / "cache"), progress=False)
    out = str(root / "out")
    res.save(out)
    return pipe, res, out, root


def test_pca_deterministic_from_cached_embeddings(first):
    _, res, _, _ = first
    d = res.cache_dir
    f = next(x for x in os.listdir(d) if x.startswith("embed-"))
    emb = load_safetensors(os.path.join(d, f))["embeddings"]
    a, b = pca(emb), pca(emb.clone())
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], res.basis[k]) for k in a)
    c = a["components"]
    assert torch.allclose(c @ c.T, torch.eye(len(c)), atol=1e-5)
    r = a["explained_variance_ratio"]
    assert torch.all(r[:-1] >= r[1:]) and 0 < float(r.sum()) <= 1 + 1e-5
    assert torch.allclose(project(emb, a).var(0, unbiased=True), a["explained_variance"], rtol=1e-3, atol=1e-7)


def test_up_vectors_orthonormal_frozen_and_seed_recorded(first):
    pipe, res, out, _ = first
    man = json.load(open(os.path.join(out, "manifest.json")))
    files = [load_file(os.path.join(out, s["file"])) for s in man["sliders"]]
    signs = [s["sign"] for s in man["sliders"]]
    keys = sorted(k for k in files[0] if k.endswith("lora_B.weight"))
    _, paths = resolve_sites(model_of(pipe), "auto")
    assert keys == sorted(f"unet.{p}.lora_B.weight" for p in paths)
    ups = up_vectors([files[0][f"unet.{p}.lora_B.weight"].shape[0] for p in paths], 3, man["up_seed"])
    for p, up in zip(paths, ups):
        B = torch.cat([f[f"unet.{p}.lora_B.weight"] * s for f, s in zip(files, signs)], 1)
        assert torch.equal(B, up)                                          # frozen: the seeded init
        assert torch.allclose(B.T @ B, torch.eye(3), atol=1e-5)           # orthonormal
        assert all(f[f"unet.{p}.lora_A.weight"].shape == (1, pipe.unet.get_submodule(p).in_features)
                   for f in files)
    assert man["up_seed"] == 1 and man["samples"] == 8 and man["embedder"] == "toy-clip"
    assert [s["component"] for s in man["sliders"]] == [0, 1, 2]
    assert all(s["sign"] in (-1, 1) and 0 < s["explained_variance"] < 1 for s in man["sliders"])
    assert set(os.listdir(out)) == {"slider_00.safetensors", "slider_01.safetensors", "slider_02.safetensors",
                                    "manifest.json", "pca.safetensors"}
    assert torch.equal(load_file(os.path.join(out, "pca.safetensors"))["components"], res.basis["components"])


def _trainer(pipe, cfg, basis, up_seed=5):
    from concept_edit.methods.sliderspace.cache import SampleCache, cache_root, model_fingerprint

    model = model_of(pipe)
    d = model.defaults
    _, paths = resolve_sites(model, cfg.sites)
    cache = SampleCache(cache_root(cfg.cache_dir), model_fingerprint(pipe), cfg.prompts, cfg.seed, cfg.steps,
                        d["guidance"], d["size"])
    cache.fill(pipe, cfg.samples)
    lat, _ = cache.load(cfg.samples)
    return _Trainer(model, cfg, paths, basis["components"][:cfg.components], lat, get_embedder(cfg.embedder),
                    cfg.steps, d["guidance"], d["size"], up_seed)


def test_batched_masked_sliders_equal_the_rank1_files(first):
    """Row j of the one masked rank-K forward (CFG-doubled batch) = slider j applied alone from
    its rank-1 tensors; the trainer leaves no adapter behind."""
    pipe, res, out, root = first
    tr = _trainer(pipe, _cfg(root / "cache", iterations=1), res.basis)
    try:
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            for (_, layer) in tr.router.layers("sliderspace"):  # make the sliders move a lot
                a = layer.lora_A["sliderspace"].weight
                a.copy_(torch.randn(a.shape, generator=g))
        tr.mask = tr._rows([0], [0, 1, 2])[1]
        z = tr._x0([0, 0, 0], [11, 11, 11], 1, False)
        tr.mask = None
        base = tr._x0([0], [11], 1, False)
        tensors = tr.slider_tensors()
    finally:
        tr.close()
    router = lora_router(pipe)
    assert "sliderspace" not in router.adapters
    for j in range(3):
        router.load(f"one{j}", tensors[j], prefix="unet")
        try:
            zj = tr._x0([0], [11], 1, True).detach()  # grad on: the unmerged LoRA path, as in training
        finally:
            router.remove(f"one{j}")
        assert torch.allclose(z[j:j + 1], zj, atol=1e-4), j
        assert not torch.allclose(z[j:j + 1], base, atol=1e-2)


def test_loss_falls_on_a_tiny_family(first):
    """The same draws (steps 0..5) score lower after six optimisation steps on them."""
    from concept_edit.core.training import step_generator

    pipe, res, _, root = first
    cfg = _cfg(root / "cache", iterations=6, lr=2e-2, components=2)
    tr = _trainer(pipe, cfg, res.basis)
    try:
        before = [tr.loss(s, step_generator(cfg.seed, s)).item() for s in range(6)]
        losses, _ = tr.train(False, None, False)
        after = [tr.loss(s, step_generator(cfg.seed, s)).item() for s in range(6)]
    finally:
        tr.close()
    assert np.allclose(losses[0], before[0], atol=1e-5)
    assert np.mean(after) < np.mean(before) - 0.1, (before, after)


def test_scale0_is_base_files_load_in_plain_diffusers(first, tiny_dirs):
    pipe, _, out, _ = first
    s = SampleSettings(prompt="a circle", n=1, seed=3, steps=2)
    base = generate(pipe, s, progress=False)
    f = os.path.join(out, "slider_01.safetensors")
    h = apply_artifact(pipe, f, scale=0.0)
    zero = generate(pipe, s, progress=False)
    lora_router(pipe).set_scale(h.name, 4.0)
    moved = generate(pipe, s, progress=False)
    h.remove()
    assert np.array_equal(zero, base) and not np.array_equal(moved, base)
    assert np.array_equal(generate(pipe, s, progress=False), base)
    from diffusers import DiffusionPipeline

    plain = DiffusionPipeline.from_pretrained(tiny_dirs(FAMILY))
    plain.load_lora_weights(f, adapter_name="s1")
    assert "s1" in plain.get_active_adapters()


def test_second_run_reuses_the_cache(first):
    pipe, res, _, root = first
    import time

    t = time.perf_counter()
    again = discover(model_of(pipe), _cfg(root / "cache", components=2, iterations=1, sign_samples=0),
                     progress=False)
    assert again.info["cache"] == {"key": res.info["cache"]["key"], "sampled": False, "embedded": False}
    assert again.cache_dir == res.cache_dir
    assert again.info["timings"]["sampling_s"] < res.info["timings"]["sampling_s"]
    assert torch.equal(again.embeddings, res.embeddings)
    fewer = discover(model_of(pipe), _cfg(root / "cache", samples=5, components=2, iterations=1,
                                          sign_samples=0), progress=False)
    assert fewer.info["cache"]["sampled"] is False and torch.equal(fewer.embeddings, res.embeddings[:5])
    assert time.perf_counter() - t < 30


def test_cli_discover_generate_grid_export(tiny_dirs, tmp_path, capsys):
    d = tiny_dirs(FAMILY)
    out = str(tmp_path / "ss")
    code, o, err = run_cli(["sliderspace", "discover", "--model", d, "--prompt", "a circle", "--samples", "6",
                            "--components", "2", "--iterations", "2", "--steps", "2", "--sign-samples", "1",
                            "--set", f"cache_dir={tmp_path / 'c'}", "--sheet-seeds", "1",
                            "--sheet-scales", "-2,0,2", "--out", out], capsys)
    assert code == 0, err
    assert set(os.listdir(out)) == {"slider_00.safetensors", "slider_01.safetensors", "manifest.json",
                                    "pca.safetensors", "sheet.png"}
    assert not os.path.exists(out + ".ckpt")
    code, o, err = run_cli(["sliderspace", "grid", out, "--model", d, "--scales", "-1,0,1", "--seeds", "1",
                            "--out", str(tmp_path / "sheet.png")], capsys)
    assert code == 0 and os.path.exists(tmp_path / "sheet.png"), err
    # the report scores with the toy classifier: a model that is not a toy-world one is refused in one line
    code, _, err = run_cli(["sliderspace", "report", out, "--model", d, "--seeds", "1",
                            "--out", str(tmp_path / "r.json")], capsys)
    assert code == 2 and "not a toy-world model" in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "r.json")
    f = f"{out}/slider_01.safetensors"
    code, _, err = run_cli(["generate", "--model", d, "--prompt", "a circle", "--n", "1", "--steps", "2",
                            "--apply", f"{f}@2", "--out", str(tmp_path / "gen")], capsys)
    assert code == 0, err
    code, _, err = run_cli(["slider", "export", "--kohya", f, str(tmp_path / "k.safetensors")], capsys)
    assert code == 0, err


def test_bad_input_one_line_nothing_in_out(tiny_dirs, tmp_path, capsys):
    d = tiny_dirs(FAMILY)
    junk = str(tmp_path / "junk.safetensors")
    save_file({"weight": torch.zeros(2)}, junk)
    png = str(tmp_path / "fake.safetensors")
    open(png, "wb").write(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    base = ["sliderspace", "discover", "--model", d, "--steps", "2", "--set", f"cache_dir={tmp_path / 'c'}"]
    cases = [
        (["--prompt", "a circle", "--samples", "4", "--components", "4"], "principal components"),
        (["--prompt", "a circle", "--embedder", f"ViT-B-32@{junk}"], "not an open_clip state dict"),
        (["--prompt", "a circle", "--embedder", f"ViT-B-32@{png}"], "not a safetensors file"),
        (["--prompt", "a circle", "--embedder", "vit-b-32.bin"], "bad embedder"),
        ([], "prompt list is empty"),
        (["--prompt", "a circle", "--sites", "text_in", "--samples", "4", "--components", "2"],
         "no layers in site group"),
        (["--prompt", "a circle", "--sites", "resnets", "--samples", "4", "--components", "2"], "non-Linear"),
    ]
    for i, (extra, msg) in enumerate(cases):
        out = str(tmp_path / f"out{i}")
        code, _, err = run_cli(base + extra + ["--out", out], capsys)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not os.path.exists(out) and not os.path.exists(out + ".ckpt"), extra
    assert not os.path.exists(tmp_path / "c")  # the site errors come before any sampling
    with pytest.raises(ConfigError, match="prompt list is empty"):
        SliderSpaceConfig(prompts=[])
    os.makedirs(tmp_path / "full")
    open(tmp_path / "full" / "keep.txt", "w").write("x")
    code, _, err = run_cli(base + ["--prompt", "a", "--out", str(tmp_path / "full")], capsys)
    assert code == 2 and "not a SliderSpace output" in err and os.listdir(tmp_path / "full") == ["keep.txt"]


def test_model_recommended_settings_under_the_flags(tiny_dirs, tmp_path):
    """A model directory's concept_edit.json 'methods.sliderspace' is the bottom layer of the
    discover config: flags and --set win, --config replaces it."""
    import shutil

    from concept_edit.cli.main import build_parser

    d = str(tmp_path / "m")
    shutil.copytree(tiny_dirs(FAMILY), d)
    path = os.path.join(d, "concept_edit.json")
    shipped = json.load(open(path)) if os.path.exists(path) else {}
    shipped["methods"] = {"sliderspace": {"basis": "ica", "start": 0.2, "iterations": 7}}
    json.dump(shipped, open(path, "w"))

    def cfg_of(*extra):
        args = build_parser().parse_args(["sliderspace", "discover", "--model", d, "--prompt", "a circle",
                                          "--out", str(tmp_path / "o"), *extra])
        return args.check(args), args

    cfg, args = cfg_of()
    assert (cfg.basis, cfg.start, cfg.iterations) == ("ica", 0.2, 7) and args.recommended["basis"] == "ica"
    cfg, args = cfg_of("--iterations", "3", "--set", "basis=pca")
    assert (cfg.basis, cfg.start, cfg.iterations) == ("pca", 0.2, 3) and "iterations" not in args.recommended
    yml = tmp_path / "c.yaml"
    yml.write_text("prompts: ['a circle']\n")
    cfg, args = cfg_of("--config", str(yml))
    assert cfg.basis == SliderSpaceConfig(prompts=["x"]).basis and args.recommended == {}


def test_prompt_oracle_switch_is_exact_and_counts_changes():
    """The prompt-switch ceiling (eval.prompt_oracle) on the toy turbo: switching to the same
    prompt at any step gives the bare samples bit for bit; naming a colour from step 0 changes
    something, and every row's purity is its family's share of the counted changes."""
    from concept_edit.core.loading import load_pipeline
    from concept_edit.core.sampler import sample
    from concept_edit.eval.prompt_oracle import named, purity_oracle, switched

    pipe = load_pipeline("weights/toy-turbo")
    seeds = [50_000, 50_001, 50_002]
    base = sample(pipe, ["a square"] * 3, seed=seeds, return_states=True)
    ref = (np.asarray(base.images) * 255).round().astype(np.uint8)
    for k in (0, 1, 3):
        assert np.array_equal(switched(pipe, base, "a square", seeds, k), ref), k
    with pytest.raises(ValueError, match="outside the run's steps 0..3"):
        switched(pipe, base, "a square", seeds, 4)
    assert named("a blue square on a plain background", size="large") == "a large blue square on a plain background"
    with pytest.raises(ValueError, match="v1 toy-world prompt"):
        named("a purple square", size="large")
    rows = purity_oracle(pipe, "a red square", steps=[0], seeds=8, variants={"colour": ["blue"], "size": ["large"]})
    assert [r["prompt"] for r in rows] == ["a large red square"]     # colour is named: not varied
    rows = purity_oracle(pipe, "a square", steps=[0], seeds=8, variants={"colour": ["blue"]})
    (r,) = rows
    total = sum(r["changes"].values())
    assert total > 0 and r["purity"] == round(r["changes"]["colour"] / total, 4)


@pytest.mark.parametrize("family", ["sd3", "pixart"])
def test_prompt_switch_is_exact_on_transformers(tiny_dirs, family):
    """The oracle's resume path on DiTs (the SD3 null-token shortcut on): switching to the same
    prompt part-way reproduces the run; switching to another prompt changes it."""
    from concept_edit.core.loading import load_pipeline
    from concept_edit.core.null_tokens import null_token_shortcut
    from concept_edit.core.sampler import sample
    from concept_edit.eval.prompt_oracle import switched

    pipe = load_pipeline(tiny_dirs(family))
    seeds = [3, 4]
    with null_token_shortcut(pipe):
        base = sample(pipe, ["a cat"] * 2, seed=seeds, steps=4, return_states=True)
        ref = (np.asarray(base.images) * 255).round().astype(np.uint8)
        for k in (0, 2):
            assert np.array_equal(switched(pipe, base, "a cat", seeds, k, steps=4), ref), k
        other = switched(pipe, base, "a dog on a hill", seeds, 2, steps=4)
    assert not np.array_equal(other, ref)


def test_a_toy_model_given_by_path_is_known_by_its_marker(tmp_path):
    """A toy model outside weights/ (a fresh `toyworld train` output, a copy) is still the toy world:
    its concept_edit.json says so. Without the marker, a directory is not taken for one."""
    from concept_edit.core.embedded import embedded_path
    from concept_edit.core.loading import load

    src = embedded_path("toy-mmdit")
    copy = tmp_path / "my-toy"
    copy.mkdir()
    for name in os.listdir(src):
        if name != "concept_edit.json":
            os.symlink(os.path.join(src, name), copy / name)
    shipped = json.load(open(os.path.join(src, "concept_edit.json")))
    assert shipped["world"] == "toy"
    (copy / "concept_edit.json").write_text(json.dumps(shipped))
    m = load(str(copy))
    assert m.source == "my-toy" and m.toy_world
    (copy / "concept_edit.json").write_text(json.dumps({k: v for k, v in shipped.items() if k != "world"}))
    assert not load(str(copy)).toy_world
