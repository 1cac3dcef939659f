"""ESD: target formula, variants on every family, off == base, resume, errors."""
import os
import subprocess
import sys

import pytest
import torch

from concept_edit.core.artifacts import apply_artifact
from concept_edit.core.config import ConfigError
from concept_edit.core.denoise import Denoiser
from concept_edit.core.families import resolve_sites
from concept_edit.core.io import load_safetensors
from concept_edit.core.training import EditParams
from concept_edit.methods.esd import EsdConfig, esd_target, train_esd

from conftest import FAMILIES

TINY = dict(iterations=2, bank_size=2, ddim_steps=4, lr=1e-2)


def test_target_formula():
    a, c, e = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 5.0]), torch.tensor([0.5, 1.0])
    assert torch.equal(esd_target(a, c, e, 1.0), torch.tensor([-1.5, -2.0]))
    assert torch.equal(esd_target(a, c, e, 2.0), a - 2 * (c - e))
    # the newer code's anchor = concept at eta = 2 is the paper's anchor '' at eta = 1
    assert torch.equal(esd_target(c, c, e, 2.0), esd_target(e, c, e, 1.0))


def test_concept_specs_and_batched_target():
    """Per-concept anchors/negatives/templates resolve to the right prompts, and the batched frozen
    target equals mean(anchors) - eta (concept - mean(negatives)) sample by sample."""
    from concept_edit.methods.esd.train import _frozen_target

    cfg = EsdConfig(concepts=["circle", {"concept": "striped", "anchor": "plain|dotted", "negative": "anchor",
                                         "templates": ["a {} background", "a star on a {} background"]}],
                    anchor="", templates=[])
    circle, striped = cfg.specs()
    assert circle.prompts(0) == ("circle", [""], [""])
    assert striped.prompts(1) == ("a star on a striped background",
                                  ["a star on a plain background", "a star on a dotted background"],
                                  ["a star on a plain background", "a star on a dotted background"])
    assert EsdConfig(concepts=["red"], anchor="{concept}", templates=["a {} circle"]).specs()[0].prompts(0) \
        == ("a red circle", ["a red circle"], [""])
    assert EsdConfig(concepts=["red"], templates=["a {} circle"]).specs()[0].prompts(0)[1] == ["a circle"]
    with pytest.raises(ConfigError, match="valid: concept, anchor"):
        EsdConfig(concepts=[{"concept": "x", "anchr": ""}])
    with pytest.raises(ConfigError, match="exactly one"):
        EsdConfig(concepts=["x"], templates=["a background"])

    values = {"circle": 3.0, "": 1.0, "a star on a striped background": 7.0,
              "a star on a plain background": 2.0, "a star on a dotted background": 4.0}

    class Fake:  # dn stand-in: the output is the prompt's value plus the state
        def cat(self, states):
            return torch.cat(states)

        def predict(self, state, prompts):
            return state + torch.tensor([values[p] for p in prompts]).view(-1, 1)

    states = [torch.zeros(1, 2), torch.ones(1, 2)]
    rows = [circle.prompts(0), striped.prompts(1)]
    got = _frozen_target(Fake(), states, rows, lambda p: p, 2.0)
    want = torch.tensor([[1 - 2 * (3 - 1)] * 2, [1 + 3 - 2 * ((1 + 7) - (1 + 3))] * 2], dtype=torch.float)
    assert torch.equal(got, want)
    # a preserved prompt (eta 0 for its row) regresses onto its own frozen output
    keep = EsdConfig(concepts=["circle"], preserve=["a star on a  plain background"]).preserve_spec()
    assert keep.prompts(0) == ("a star on a plain background", ["a star on a plain background"],
                               ["a star on a plain background"])
    got = _frozen_target(Fake(), states, [circle.prompts(0), keep.prompts(0)], lambda p: p, [2.0, 0.0])
    assert torch.equal(got, torch.tensor([[1 - 2 * (3 - 1)] * 2, [1 + 2] * 2], dtype=torch.float))
    with pytest.raises(ConfigError, match="also a prompt to erase"):
        EsdConfig(concepts=["circle"], preserve=["circle"])
    with pytest.raises(ConfigError, match="preserve_share"):
        EsdConfig(concepts=["circle"], preserve=["a star"], preserve_share=1.0)


@pytest.mark.parametrize("sampler", ["bank", "online"])
def test_templated_attribute_trains(tiny_pipe, sampler, tmp_path, monkeypatch):
    """An attribute erased in its contexts next to a plain concept, with preserved prompts, trains
    (bank and online x_t; preserved prompts are drawn with eta 0), saves and applies."""
    from concept_edit.methods.esd import train as esd_train

    etas = []
    real = esd_train._frozen_target
    monkeypatch.setattr(esd_train, "_frozen_target",
                        lambda dn, st, rows, c, eta: etas.extend(zip([r[0] for r in rows], eta))
                        or real(dn, st, rows, c, eta))
    pipe = tiny_pipe("sd1")
    spec = {"concept": "striped", "anchor": "plain|dotted", "negative": "anchor",
            "templates": ["a {} background", "a star on a {} background"]}
    res = train_esd(pipe, EsdConfig(concepts=["circle", spec], sampler=sampler, batch_size=4,
                                    preserve=["a star on a plain background"], preserve_share=0.5,
                                    **dict(TINY, iterations=3)), progress=False)
    assert len(res.losses) == 3 and all(torch.isfinite(torch.tensor(res.losses)))
    assert ("a star on a plain background", 0.0) in etas
    assert {e for p, e in etas if p != "a star on a plain background"} == {TINY.get("eta", 1.0)}
    res.save(str(tmp_path / "e.safetensors"))
    res.edit.remove()
    apply_artifact(pipe, str(tmp_path / "e.safetensors")).remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_variants_select_correct_sets_and_train(tiny_pipe, family, tmp_path):
    pipe = tiny_pipe(family)
    x, u, full = (set(resolve_sites(pipe, g)) for g in ("xattn", "esd_u", "all"))
    strict = set(resolve_sites(pipe, "text_kv"))
    assert strict and strict <= x and x.isdisjoint(u) and u | x <= full
    for variant, train in (("x", "lora"), ("u", "direct"), ("x-strict", "direct"), ("self", "lora")):
        cfg = EsdConfig(concepts=["circle"], variant=variant, train=train, **TINY)
        res = train_esd(pipe, cfg, progress=False)
        assert set(res.edit.paths) == set(resolve_sites(pipe, cfg.site_group())) and res.edit.paths
        assert len(res.losses) == 2 and all(map(lambda v: v == v, res.losses))
        path = str(tmp_path / f"{variant}.safetensors")
        res.save(path)
        res.edit.remove()
        h = apply_artifact(pipe, path)
        h.remove()


@pytest.mark.parametrize("mode", ["lora", "direct"])
def test_edit_off_equals_base(tiny_pipe, mode):
    pipe = tiny_pipe("sd1")
    dn = Denoiser(pipe)
    state = dn.capture(["a circle"], steps=2, guidance=3.0, seed=0).take([0], [1])
    cond = dn.encode(["a circle"])
    with torch.no_grad():
        base = dn.predict(state, cond)
    edit = EditParams(pipe, resolve_sites(pipe, "xattn"), mode=mode, name="t")
    with torch.no_grad():
        for p in edit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        assert not torch.equal(dn.predict(state, cond), base)
        with edit.off():
            assert torch.equal(dn.predict(state, cond), base)
        assert not torch.equal(dn.predict(state, cond), base)
    edit.remove()
    with torch.no_grad():
        assert torch.equal(dn.predict(state, cond), base)


def test_resume_equals_uninterrupted(tiny_pipe, tmp_path):
    cfg = EsdConfig(concepts=["circle", "square"], variant="x", checkpoint_every=2, batch_size=2,
                    **{**TINY, "iterations": 4})
    a = train_esd(tiny_pipe("sd1"), cfg, progress=False)
    ck = str(tmp_path / "ck")
    train_esd(tiny_pipe("sd1"), cfg, checkpoint_dir=ck, progress=False, stop_at=2)  # "interrupted"
    b = train_esd(tiny_pipe("sd1"), cfg, checkpoint_dir=ck, resume=True, progress=False)
    assert a.losses == b.losses
    ta, tb = a.edit.artifact_tensors(), b.edit.artifact_tensors()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert b.loop.report() == "resumed at 2, ran 2 steps" and os.path.isdir(ck)
    b.save(str(tmp_path / "e.safetensors"))
    assert not os.path.exists(ck)                  # the artifact is written: no checkpoint left


@pytest.mark.parametrize("family", ["sd1", "sd3"])
def test_gradient_checkpointing_same_training(tiny_pipe, family, monkeypatch):
    import torch.utils.checkpoint as tuc

    cfg = EsdConfig(concepts=["circle"], variant="x", batch_size=2, **{**TINY, "iterations": 2})
    a = train_esd(tiny_pipe(family), cfg, progress=False)
    pipe = tiny_pipe(family)
    calls = []
    real = tuc.checkpoint
    monkeypatch.setattr(tuc, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    b = train_esd(pipe, cfg.replace(gradient_checkpointing=True), progress=False)
    assert calls                                          # blocks were recomputed in backward
    assert not any(getattr(m, "gradient_checkpointing", False) for m in Denoiser(pipe).module.modules())
    assert a.losses == pytest.approx(b.losses, rel=1e-4)
    ta, tb = a.edit.artifact_tensors(), b.edit.artifact_tensors()
    assert all(torch.allclose(ta[k], tb[k], atol=1e-6) for k in ta)


def test_errors_name_valid_choices(tiny_pipe):
    with pytest.raises(ConfigError, match="x, x-strict, u, self, full"):
        EsdConfig(concepts=["circle"], variant="xx")
    with pytest.raises(ConfigError, match="concept"):
        EsdConfig(concepts=[])
    with pytest.raises(ValueError, match="selects no parameters"):
        EditParams(tiny_pipe("sd3"), resolve_sites(tiny_pipe("sd3"), "resnets"), name="e")


def test_accelerate_launch_one_cpu_process(tiny_dirs, tmp_path):
    out = str(tmp_path / "acc.safetensors")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "concept_edit.cli.main", "esd", "--model", tiny_dirs("sd1"), "--concept", "circle",
           "--preserve", "a star; a square", "--steps", "2", "--bank-size", "2", "--ddim-steps", "4",
           "--out", out]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert any(k.endswith("lora_A.weight") for k in load_safetensors(out))
    from concept_edit.core.io import read_artifact_meta

    assert read_artifact_meta(out)["config"]["preserve"] == ["a star", "a square"]
