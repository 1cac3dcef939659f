"""Issue 14's bars for the shipped ESD-x "keep the prompt" configs on the toy world (heavy: about
10 min per config on 2 CPU cores; ``pytest -m heavy tests/test_toy_keep_measured.py``).

The protocol of docs/esd.md with fewer seeds (32 per prompt): the concept shown at most 15% of
the time on its prompts, the other values of its axis kept at least 0.90 of base, every other
attribute named in the concept's own prompts as prompted at least 0.90 as often as in the base,
and no replacement above 60% unless the anchor asks for it.
"""
import pytest

pytestmark = [pytest.mark.heavy, pytest.mark.timeout(3600)]
SEEDS = 32
CASES = [("toy-circle-keep", {"shape": "circle"}, "square"),
         ("toy-red-keep", {"colour": "red"}, "blue"),
         ("toy-striped-keep", {"background": "striped"}, "plain")]


@pytest.fixture(scope="module")
def toy():
    from concept_edit.core.loading import load_pipeline

    return load_pipeline(None)


@pytest.mark.parametrize("name,concept,anchor", CASES)
def test_esd_keep_config_meets_issue_14(toy, tmp_path, name, concept, anchor):
    from concept_edit.eval.toy import erasure_report
    from concept_edit.methods.esd import EsdConfig, train_esd

    cfg = EsdConfig.from_yaml(f"configs/esd/{name}.yaml")
    assert {s.anchor for s in cfg.specs()} == {anchor}           # the replacement the config asks for
    path = str(tmp_path / "esd.safetensors")
    res = train_esd(toy, cfg, progress=False)
    res.save(path)
    res.edit.remove()
    assert res.seconds <= 600
    rep = erasure_report(toy, concept, edit=path, seeds=SEEDS, n_target=2, n_other=4, n_retain=6)
    inp = rep["in_prompt"]
    assert rep["target"]["edited"] <= 0.15 and rep["others"]["keep_ratio"] >= 0.90, rep["target"]
    assert inp["min_ratio"] >= 0.90, inp["attributes"]
    shares = inp["replacement"]["shares"]
    top = max(shares, key=shares.get)
    assert top == anchor or shares[top] <= 0.60, shares
