"""Diversity distillation: switch mapping (both modes, zero-base-step error), hybrid endpoints on
tiny pairs of every family, x0-hat trajectories, diversity metrics, slider transfer."""
import json
import os

import numpy as np
import pytest
import torch

from concept_edit.core.io import ArtifactError
from concept_edit.core.sampler import Phase, sample
from concept_edit.methods.distill import (apply_slider, apply_to_pair, hybrid_sample, map_switch,
                                          resolve_switch, run_schedule)

from conftest import FAMILIES

PROMPTS = ["a red circle", "a blue square"]
ONE = PROMPTS[:1]
DMD2 = [999, 749, 499, 249]


def _perturb(pipe, seed=1, amount=0.05):
    """The 'distilled' model of a tiny pair: the same pipeline, denoiser weights nudged."""
    den = getattr(pipe, "unet", None) or pipe.transformer
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in den.parameters():
            if p.numel() > 1:
                p.add_(amount * p.std().clamp_min(1e-3) * torch.randn(p.shape, generator=g))
    return pipe


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    from concept_edit.core.loading import load_pipeline

    cache = {}

    def get(family):
        if family not in cache:
            d = tiny_dirs(family)
            cache[family] = (load_pipeline(d), _perturb(load_pipeline(d)))
        return cache[family]
    return get


# -- switch mapping -------------------------------------------------------------------------------
def test_resolve_switch_step_timestep_sigma():
    ts, sig = torch.tensor(DMD2), [14.6, 3.0, 1.0, 0.3]
    assert resolve_switch(ts, sig, switch=1) == 1
    assert resolve_switch(ts, sig, switch_timestep=749) == 1     # base runs while t > T
    assert resolve_switch(ts, sig, switch_timestep=800) == 1
    assert resolve_switch(ts, sig, switch_timestep=500) == 2
    assert resolve_switch(ts, sig, switch_sigma=2.0) == 2
    with pytest.raises(ValueError, match="exactly one"):
        resolve_switch(ts, sig, switch=1, switch_timestep=749)
    with pytest.raises(ValueError, match="outside"):
        resolve_switch(ts, sig, switch=5)
    # two schedulers: argmin |t_base - t_distilled|; 25-step DDIM 'leading' grid 961, 921, ...
    base = list(range(961, 0, -40))
    assert map_switch(base, DMD2, 1) == 5 and base[5] == 761
    assert map_switch(base, DMD2, 0) == 0          # 999 is nearest 961: the base would run no step


def test_zero_base_steps_is_an_error_in_both_modes(pair):
    base, dist = pair("sd1")
    with pytest.raises(ValueError, match="base would run no step"):
        hybrid_sample(base, dist, PROMPTS[:1], switch=0)
    with pytest.raises(ValueError, match="base would run no step"):
        hybrid_sample(base, dist, PROMPTS[:1], switch_timestep=1000, timesteps=DMD2)
    with pytest.raises(ValueError, match="distilled model would run no step"):
        hybrid_sample(base, dist, PROMPTS[:1], switch=4)
    # the reference's trap: a coarse base grid (501, 1) maps the distilled step 1 (t=749) to base step 0
    with pytest.raises(ValueError, match="maps to base step 0 of 2.*base would run no step"):
        hybrid_sample(base, dist, PROMPTS[:1], mode="two", switch=1, timesteps=DMD2, base_steps=2)
    with pytest.raises(ValueError, match="base would run no step"):
        hybrid_sample(base, dist, PROMPTS[:1], mode="two", switch=0, timesteps=DMD2, base_steps=10)


# -- the hybrid on tiny pairs ---------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_hybrid_endpoints_every_family(pair, family):
    base, dist = pair(family)
    kw = dict(seed=0, output_type="latent")
    student = sample(dist, ONE, seed=0, output_type="latent").latents
    teacher = sample(dist, ONE, seed=0, output_type="latent",          # base on the same schedule
                     phases=[Phase(denoiser=base, guidance=None)]).latents
    n = len(run_schedule(dist)[0])
    r0 = hybrid_sample(base, dist, ONE, switch=0, allow_pure=True, **kw)
    rn = hybrid_sample(base, dist, ONE, switch=n, allow_pure=True, **kw)
    r1 = hybrid_sample(base, dist, ONE, switch=1, **kw)
    assert torch.equal(r0.latents, student) and torch.equal(rn.latents, teacher)
    assert r1.models == ["base"] + ["distilled"] * (n - 1) and r1.base_steps == 1
    assert not torch.allclose(r1.latents, student) and not torch.allclose(r1.latents, teacher)
    if family == "sd1":  # the base alone on its own pipeline and scheduler: the same images
        torch.testing.assert_close(rn.latents, sample(base, ONE, seed=0, output_type="latent").latents)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])   # DDIM and Euler
def test_two_scheduler_mode_equals_the_spliced_schedule(pair, family):
    base, dist = pair(family)
    bts, _ = run_schedule(base, 10)
    r = hybrid_sample(base, dist, PROMPTS, mode="two", switch=1, timesteps=DMD2, base_steps=10,
                      output_type="latent", return_x0=True)
    k = map_switch(bts, DMD2, 1)
    assert r.base_steps == k == 2 and r.models == ["base"] * 2 + ["distilled"] * 3 and len(r.x0) == 5
    assert [int(t) for t in r.timesteps] == [int(t) for t in bts[:k]] + DMD2[1:]
    ref = sample(dist, PROMPTS, seed=0, timesteps=[int(t) for t in bts[:k]] + DMD2[1:], output_type="latent",
                 phases=[Phase(until_step=k, denoiser=base), Phase()])
    torch.testing.assert_close(r.latents, ref.latents, atol=1e-5, rtol=0)


def test_mismatched_pair_is_refused(pair):
    base, _ = pair("sd1")
    _, other = pair("sd3")
    with pytest.raises(ValueError, match="sd1 model and the distilled one a sd3"):
        hybrid_sample(base, other, PROMPTS[:1], switch=1)


# -- x0-hat ----------------------------------------------------------------------------------------
def test_x0_last_equals_output_and_strip(pair, tmp_path):
    from diffusers import DDIMScheduler
    from PIL import Image

    from concept_edit.eval.grid import labelled_grid
    from concept_edit.methods.distill import decode_x0
    from concept_edit.methods.distill.trajectory import strip_tiles, trajectories

    base, dist = pair("sd1")
    saved = dist.scheduler
    dist.scheduler = DDIMScheduler.from_config(saved.config, set_alpha_to_one=True)  # eta 0
    try:
        r = hybrid_sample(base, dist, PROMPTS, switch=1, return_x0=True)
        torch.testing.assert_close(r.x0[-1], r.latents, atol=1e-6, rtol=0)
        np.testing.assert_allclose(decode_x0(dist, r)[-1], r.images, atol=1e-5)
        tr = trajectories(base, dist, "a circle", seeds=[0, 1], switch=1)
    finally:
        dist.scheduler = saved
    for name in ("base", "distilled", "hybrid"):
        assert tr[name]["x0"].shape == (4, 2, 64, 64, 3)
        np.testing.assert_allclose(tr[name]["x0"][-1], tr[name]["images"], atol=1e-5)
    assert tr["hybrid"]["models"] == ["base", "distilled", "distilled", "distilled"]
    tiles, cols, rows = strip_tiles(tr)
    assert len(tiles) == 6 and len(cols) == 5 and rows[0] == "base 0"
    out = tmp_path / "strip.png"
    Image.fromarray(labelled_grid(tiles, cols, rows, tile=32)).save(out)
    assert Image.open(out).size[1] > 6 * 32


# -- diversity metrics ---------------------------------------------------------------------------
def test_diversity_metrics_on_known_sets():
    from concept_edit.eval.diversity import (attribute_diversity, centroids, entropy, mean_pairwise_distance,
                                             position_spread, vendi_score)

    assert entropy(["a"] * 8) == 0.0
    assert entropy(["a", "b"] * 4) == pytest.approx(1.0)
    assert entropy(["a", "b", "c", "d"]) == pytest.approx(2.0)
    ent, sh = attribute_diversity([{"shape": "circle", "colour": c} for c in ["red", "red", "blue", "green"]])
    assert ent == {"shape": 0.0, "colour": pytest.approx(1.5)} and sh["colour"] == {"red": 0.5, "blue": 0.25,
                                                                                      "green": 0.25}
    same = torch.tensor([[1.0, 2.0, 3.0]] * 5)
    assert vendi_score(same) == pytest.approx(1.0, abs=1e-6) and mean_pairwise_distance(same) == pytest.approx(0.0)
    for k in (2, 3, 5):
        assert vendi_score(torch.eye(k)) == pytest.approx(k, abs=1e-6)
        assert mean_pairwise_distance(torch.eye(k)) == pytest.approx(1.0)
    assert vendi_score(torch.cat([torch.eye(2)] * 3)) == pytest.approx(2.0, abs=1e-6)  # duplicates
    # centroids: a white square on black at known places
    imgs = np.zeros((2, 32, 32, 3), np.uint8)
    imgs[0, 4:8, 4:8] = 255
    imgs[1, 20:28, 12:16] = 255
    c = centroids(imgs)
    np.testing.assert_allclose(c, [[6 / 32, 6 / 32], [14 / 32, 24 / 32]], atol=1e-6)
    assert position_spread(c[[0, 0]]) == 0.0
    assert position_spread(c) == pytest.approx(np.sqrt(((c[0] - c[1]) ** 2).sum()) / 2)


def test_diversity_report_records_encoder_and_versions():
    from concept_edit.eval.diversity import diversity_report

    imgs = np.zeros((3, 16, 16, 3), np.uint8)
    imgs[1, 2:5, 2:5] = 200
    labels = [{"shape": s} for s in ("circle", "star", "star")]
    rep = diversity_report(imgs, labels=labels, embed=lambda x: torch.eye(3), encoder="identity")
    assert rep["encoder"] == "identity" and rep["vendi"] == pytest.approx(3.0) and rep["n"] == 3
    assert set(rep["versions"]) >= {"torch", "numpy", "open_clip"}
    assert rep["entropy"]["shape"] == pytest.approx(0.9183, abs=1e-4)


# -- slider transfer -----------------------------------------------------------------------------
def _slider_file(pipe, path):
    from concept_edit.core.artifacts import lora_edit
    from concept_edit.core.families import resolve_sites
    from concept_edit.core.lora import lora_router

    router = lora_router(pipe)
    router.add("mk", resolve_sites(pipe, "noxattn")[:6], rank=2)
    with torch.no_grad():
        for p in router.parameters("mk", "B"):
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    sd = router.state_dict("mk", "unet")
    router.remove("mk")
    lora_edit(pipe, sd, "slider", {}, {"rank": 2, "alpha": 2, "start": 0.0}).save(str(path))
    return str(path)


def test_slider_transfer_and_refusal(pair, tmp_path):
    from concept_edit.core.artifacts import apply_artifact
    from safetensors.torch import load_file, save_file

    base, dist = pair("sd1")
    f = _slider_file(base, tmp_path / "s.safetensors")
    kw = dict(seed=0, output_type="latent")
    plain = sample(dist, PROMPTS[:1], **kw).latents
    with pytest.raises(ArtifactError, match="other base weights"):   # today's check, by design here
        apply_artifact(dist, f, scale=2.0)
    h = apply_slider(dist, f, scale=2.0)
    try:
        on = sample(dist, PROMPTS[:1], **kw).latents
    finally:
        h.remove()
    assert not torch.allclose(on, plain)
    torch.testing.assert_close(sample(dist, PROMPTS[:1], **kw).latents, plain)  # removed exactly
    h = apply_slider(dist, f, scale=2.0, start_step=4)                           # off for all 4 steps
    try:
        torch.testing.assert_close(sample(dist, PROMPTS[:1], **kw).latents, plain, atol=1e-5, rtol=0)
    finally:
        h.remove()
    hs = apply_to_pair(base, dist, f, scale=2.0, start_timestep=600)             # the hybrid, from t <= 600
    try:
        hyb = hybrid_sample(base, dist, PROMPTS[:1], switch=1, **kw).latents
    finally:
        [h.remove() for h in hs]
    assert not torch.allclose(hyb, hybrid_sample(base, dist, PROMPTS[:1], switch=1, **kw).latents)
    # refused by name: another family, or sites this model lacks
    _, sd3 = pair("sd3")
    with pytest.raises(ArtifactError, match="LoRA for a sd1 model.*this is a sd3 model"):
        apply_slider(sd3, f)
    sd = load_file(f)
    from concept_edit.core.io import read_metadata

    bad = {k.replace("down_blocks.0", "down_blocks.7"): v for k, v in sd.items()}
    g = str(tmp_path / "bad.safetensors")
    save_file(bad, g, metadata=read_metadata(f))
    with pytest.raises(ArtifactError, match=r"LoRA sites do not exist on this model \(down_blocks\.7"):
        apply_slider(dist, g)
    assert not dist.unet.__dict__.get("_concept_edit_lora").adapters   # nothing left behind


# -- the CLI ---------------------------------------------------------------------------------------
def _cli(argv):
    from concept_edit.cli import distill
    from concept_edit.cli.common import Parser

    p = Parser(prog="concept-edit")
    distill.add_cli(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    args.cfg = args.check(args)
    args.func(args)


def test_cli_sample_trajectory_diversity(pair, tiny_dirs, tmp_path, capsys):
    d = tiny_dirs("sd1")
    _, dist = pair("sd1")
    dd = str(tmp_path / "distilled")
    dist.save_pretrained(dd)
    with open(os.path.join(d, "concept_edit.json")) as f, open(os.path.join(dd, "concept_edit.json"), "w") as g:
        g.write(f.read())  # the sampler defaults (4 steps) travel with the model
    out = str(tmp_path / "hyb")
    _cli(["distill", "sample", "--base", d, "--distilled", dd, "--switch", "1", "--prompt", "a circle",
          "--n", "3", "--batch", "2", "--timesteps", "999,749,499,249", "--out", out])
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["models"] == ["base"] + ["distilled"] * 3 and len(m["seeds"]) == 3
    assert sorted(os.listdir(out)) == ["000.png", "001.png", "002.png", "manifest.json"]
    with pytest.raises(ValueError, match="base would run no step"):
        _cli(["distill", "sample", "--base", d, "--distilled", dd, "--switch", "0", "--prompt", "a",
              "--out", str(tmp_path / "x")])
    _cli(["distill", "trajectory", "--base", d, "--distilled", dd, "--prompt", "a circle", "--n", "2",
          "--steps", "4", "--out", str(tmp_path / "strip.png")])
    assert os.path.getsize(tmp_path / "strip.png") > 0
    capsys.readouterr()
    _cli(["distill", "diversity", out, out, "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rep[out]["n"] == 3 and "vendi" in rep[out] and "colour" in rep[out]["entropy"]


# -- the toy-turbo recipe -------------------------------------------------------------------------
def test_toy_distill_recipe_trains_resumes_and_saves_a_4_step_student(tmp_path):
    """Two DMD updates of the recipe on the embedded toy world: the student moves away from the
    base, the fake score too; a rerun with more steps resumes from the checkpoint; the saved
    pipeline shares the base's VAE / text encoder files and samples on 999/749/499/249."""
    import filecmp

    from concept_edit.core.config import ConfigError
    from concept_edit.core.embedded import default_model
    from concept_edit.core.io import load_safetensors
    from concept_edit.core.loading import load
    from concept_edit.toyworld.config import ToyDistillConfig
    from concept_edit.toyworld.distill import run

    base = default_model()
    cfg = ToyDistillConfig(base=base, work=str(tmp_path / "w"), out=str(tmp_path / "turbo"), steps=1,
                           batch=2, fake_updates=1, eval_every=0, ckpt_every=1, threads=1)
    run(cfg)
    run(cfg.replace(steps=2))            # resumes at step 1: one more update, not two
    log = [json.loads(x)["step"] for x in open(tmp_path / "w" / "log.jsonl")]
    assert log == [1, 2]
    ck = load_safetensors(str(tmp_path / "w" / "ckpt.safetensors"))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w" / "ckpt.safetensors"), "pt") as f:
        assert f.metadata()["step"] == "2"
    b, s = load(base), load(str(tmp_path / "turbo"))
    bu = b.pipe.unet.state_dict()
    assert any(not torch.equal(bu[k], v) for k, v in s.pipe.unet.state_dict().items())
    assert any(not torch.equal(bu[k[5:]], v) for k, v in ck.items() if k.startswith("fake."))
    for sub in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert filecmp.cmp(os.path.join(base, sub), str(tmp_path / "turbo" / sub), shallow=False)
    assert s.defaults["steps"] == 4 and s.defaults["guidance"] == 0.0
    s.pipe.scheduler.set_timesteps(4)
    assert s.pipe.scheduler.timesteps.tolist() == DMD2
    with pytest.raises(ConfigError, match="timesteps"):
        ToyDistillConfig(timesteps=[249, 999])
