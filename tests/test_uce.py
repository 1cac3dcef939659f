"""UCE: the solve, every family, artifacts, strict configs."""
import json

import pytest
import torch

from concept_edit.core.artifacts import apply_artifact
from concept_edit.core.config import ConfigError
from concept_edit.core.denoise import Denoiser
from concept_edit.core.families import resolve_sites
from concept_edit.core.io import ArtifactError, read_artifact_meta
from concept_edit.core.trace import TraceDict
from concept_edit.core.weights import snapshot
from concept_edit.methods.uce import UceConfig, uce_edit
from concept_edit.methods.uce.solve import UceSystem, reference_solve

from conftest import FAMILIES


def test_solve_equals_least_squares():
    g = torch.Generator().manual_seed(0)
    for n_e in (3, 40):  # thin and dense paths
        d, out = 16, 12
        W, Ce, T, Cp = (torch.randn(s, generator=g) for s in ((out, d), (n_e, d), (n_e, d), (7, d)))
        lam, se, sp = 0.5, 1.3, 0.7
        A = torch.cat([lam ** 0.5 * torch.eye(d), se ** 0.5 * Ce, sp ** 0.5 * Cp]).double()
        Y = torch.cat([lam ** 0.5 * W.T, se ** 0.5 * (W @ T.T).T, sp ** 0.5 * (W @ Cp.T).T]).double()
        direct = torch.linalg.lstsq(A, Y).solution.T.float()
        ours = UceSystem(Ce, T, Cp, lam, se, sp).apply(W)
        assert torch.allclose(ours, direct, atol=1e-4), (ours - direct).abs().max()
        assert torch.allclose(reference_solve(W, Ce, T, Cp, lam, se, sp), direct, atol=1e-4)
        many = UceSystem(Ce, T, Cp, lam, se, sp).apply_many([W, 2 * W])
        assert torch.allclose(many[1], 2 * ours, atol=1e-4)


def _kv(pipe, prompt):
    dn = Denoiser(pipe)
    paths = resolve_sites(pipe, "text_kv")
    bank = dn.capture([prompt], steps=1, guidance=1.0, seed=0)
    with torch.no_grad(), TraceDict(dn.module, paths) as td:
        dn.predict(bank.take([0], [0]), dn.encode([prompt]))
    return torch.cat([td[p].output.flatten() for p in paths])


@pytest.mark.parametrize("family", FAMILIES)
def test_uce_every_family(tiny_pipe, family, tmp_path):
    pipe = tiny_pipe(family)
    dn = Denoiser(pipe)
    keys = [p + ".weight" for p in resolve_sites(pipe, "text_kv") + resolve_sites(pipe, "pooled")]
    assert (family in ("sd3", "flux")) == bool(resolve_sites(pipe, "pooled"))
    before = snapshot(dn.module, keys)
    kv_keep, kv_edit, kv_guide = _kv(pipe, "square"), _kv(pipe, "circle"), _kv(pipe, "")
    res = uce_edit(pipe, UceConfig(edit=["circle"], preserve=["square", "star"]), progress=False)
    assert len(res.tensors) == len(keys)
    path = str(tmp_path / "uce.safetensors")
    res.save(path)
    meta = read_artifact_meta(path)
    assert meta["kind"] == "weights" and meta["method"] == "uce" and meta["base"]["family"] == family
    h = apply_artifact(pipe, path)
    keep_after, edit_after = _kv(pipe, "square"), _kv(pipe, "circle")
    rel_keep = (keep_after - kv_keep).norm() / kv_keep.norm()
    moved = (edit_after - kv_edit).norm() / kv_edit.norm()
    assert rel_keep < 0.1, rel_keep                      # preserved prompt barely moves
    assert moved > 2 * rel_keep                          # the erased one moves much more ...
    assert (edit_after - kv_guide).norm() < (kv_edit - kv_guide).norm()  # ... toward the guide
    h.remove()
    after = snapshot(dn.module, keys)
    assert all(torch.equal(before[k], after[k]) for k in keys)   # apply then restore is exact


@pytest.mark.parametrize("family", ["sd1", "flux"])  # CLIP (BOS + EOS) and T5 (EOS only)
def test_concept_located_in_context(tiny_pipe, family):
    from concept_edit.core.tokens import diff_spans
    from concept_edit.methods.uce.method import _span_aligned

    pipe = tiny_pipe(family)
    tok = pipe.tokenizer if family == "sd1" else pipe.tokenizer_2
    bos = 1 if family == "sd1" else 0
    ids = tok("a red circle")["input_ids"]
    red = ids.index(tok("red", add_special_tokens=False)["input_ids"][0])
    assert red == bos + 1
    (off, length, start, n_c, n_g), = diff_spans(pipe, "a red circle", "a circle", 12)
    assert (off, start, n_c, n_g) == (0, red, 1, 0)
    src, dst, keep = _span_aligned(diff_spans(pipe, "a red circle", "a circle", 12), "last")
    assert (src, dst, keep) == ([red], [red - 1], [])             # 'red' onto the token before it
    src, dst, keep = _span_aligned(diff_spans(pipe, "a red circle", "a circle", 12), "all")
    assert src[:3] == [red, red + 1, red + 2] and dst[:3] == [red - 1, red, red + 1]  # then shifted
    assert keep == list(range(red)) and len(src) == 12 - red
    (_, _, start, n_c, n_g), = diff_spans(pipe, "a van gogh tree", "a oak tree", 12)  # multi-token
    assert start >= bos + 1 and n_c >= 2 and n_g >= 1


@pytest.mark.parametrize("policy", ["last", "last+eos", "all"])
def test_token_policies_run(tiny_pipe, policy):
    pipe = tiny_pipe("sd1")
    res = uce_edit(pipe, UceConfig(edit=["circle", "red"], preserve=["square"], token_policy=policy),
                   progress=False)
    assert all(torch.isfinite(v).all() for v in res.tensors.values())


def test_flux_context_embedder_site(tiny_pipe):
    pipe = tiny_pipe("flux")
    res = uce_edit(pipe, UceConfig(edit=["circle"], sites="text_in", pooled=False), progress=False)
    assert list(res.tensors) == ["transformer.context_embedder.weight"]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_pooled_layer_maps_the_concept_onto_its_guide(tiny_pipe, family):
    """The pooled-text layer (AdaLN input) is solved on pooled vectors: circle -> square, star kept."""
    from concept_edit.methods.uce.method import InputCapture

    pipe = tiny_pipe(family)
    path, = resolve_sites(pipe, "pooled")
    cap = InputCapture(pipe, [path], static=True)
    x = dict(zip(["circle", "square", "star"], cap(["circle", "square", "star"])["*"][:, 0]))
    w = snapshot(Denoiser(pipe).module, [path + ".weight"])[path + ".weight"].float()
    cfg = UceConfig(edit=["circle"], guide=["square"], preserve=["star"], preserve_empty=False, lamb=1e-4)
    new = uce_edit(pipe, cfg, progress=False).tensors[f"transformer.{path}.weight"]
    assert (new @ x["circle"] - w @ x["square"]).norm() < 1e-2 * (w @ x["circle"] - w @ x["square"]).norm()
    assert (new @ x["star"] - w @ x["star"]).norm() < 1e-2 * (w @ x["star"]).norm()
    off = uce_edit(pipe, cfg.replace(pooled=False), progress=False).tensors
    assert not any("text_embedder" in k for k in off)


def test_strict_config_names_nearest_key():
    with pytest.raises(ConfigError, match="did you mean 'preserve'"):
        UceConfig.from_dict({"edit": ["circle"], "preserv": ["square"]})
    with pytest.raises(ConfigError, match="token_policy"):
        UceConfig(edit=["circle"], token_policy="first")
    with pytest.raises(ConfigError, match="nothing to edit"):
        UceConfig(edit=[])


def test_wrong_base_refused(tiny_pipe, tmp_path):
    sd1, sd2 = tiny_pipe("sd1"), tiny_pipe("sd2")
    path = str(tmp_path / "e.safetensors")
    uce_edit(sd1, UceConfig(edit=["circle"]), progress=False).save(path)
    with pytest.raises(ArtifactError, match="sd1"):
        apply_artifact(sd2, path)
    other = tiny_pipe("sd1")
    with torch.no_grad():
        next(iter(other.unet.parameters())).add_(0)  # same weights: accepted
        w = other.unet.get_submodule(resolve_sites(other, "text_kv")[0]).weight
        w.add_(1e-3)                                  # different weights: refused
    with pytest.raises(ArtifactError, match="other base weights"):
        apply_artifact(other, path)
    apply_artifact(other, path, force=True).remove()


def test_debias_with_toy_scorer_runs(tiny_pipe, tmp_path):
    import concept_edit.toyworld.classifier  # noqa: F401 registers 'toy'
    from concept_edit.toyworld.classifier import DEFAULT_DIR
    import os

    if not os.path.exists(os.path.join(DEFAULT_DIR, "config.json")):
        pytest.fail("weights/toy-classifier is missing: it ships with the repository")
    pipe = tiny_pipe("sd1")
    cfg = UceConfig(mode="debias", edit=["circle"], attributes=["red", "blue"], ratios=[0.5, 0.5],
                    rounds=2, debias_samples=4, templates=["a {}"])
    res = uce_edit(pipe, cfg, progress=False)
    assert len(res.history) == 2 and res.tensors
    assert set(res.history[0]["observed"]["circle"]) == {"red", "blue"}
    path = str(tmp_path / "d.safetensors")
    res.save(path)
    assert json.loads(json.dumps(read_artifact_meta(path)["debias_history"]))[0]["round"] == 0
