"""The erasure audit (eval/audit.py, eval/probes/): every probe on tiny SD1 with a null edit."""
import json
import os
import re

import numpy as np
import pytest
import torch

from concept_edit.core.config import ConfigError
from concept_edit.eval.audit import AuditConcept, audit, load_concept, write_report
from concept_edit.eval.audit_report import fmt
from concept_edit.eval.probes import ORDER, PROBES

CONCEPT = {"name": "circle", "templates": ["a {}", "a red {}"], "labels": ["circle", "square", "none"],
           "neutral": ["square"], "others": ["square"]}
# the tiniest settings per probe (tiny SD1: 4 steps, 64 px)
TINY = {
    "standard": {"prompts": 2, "seeds": 2}, "alternatives": {"prompts": 2, "seeds": 2},
    "interference": {"prompts": 1, "seeds": 2}, "inpaint": {"prompts": 2, "seeds": 1},
    "completion": {"prompts": 2, "seeds": 1, "ks": [1, 2]},
    "noise": {"prompts": 1, "seeds": 1, "etas": [1.0, 1.85, 3.0], "scales": [1.0, 1.04]},
    "guidance": {"prompts": 1, "seeds": 2, "scales": [0.0, 50.0], "train_images": 4, "train_steps": 20,
                 "hidden": 16},
    "ringabell": {"prompts": 1, "seeds": 2, "etas": [0.5, 2.0]},
    "inversion": {"images": 2, "steps": 3, "batch": 2, "prompts": 1, "seeds": 2, "eval_samples": 2},
    "attack": {"prompts": 1, "k": 2, "steps": 2, "check_every": 1, "batch": 1},
}


def bright(images):
    """A fake scorer: 'circle' when the image is brighter than mid-grey, with the brightness as score."""
    return [("circle" if im.mean() > 127 else "square", float(im.mean() / 255)) for im in images]


@pytest.fixture(scope="module")
def pipe(tiny_dirs):
    from concept_edit.core.loading import load_pipeline

    return load_pipeline(tiny_dirs("sd1"))


@pytest.fixture(scope="module")
def concept():
    return AuditConcept.from_dict(CONCEPT)


@pytest.fixture(scope="module")
def results(pipe, concept, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    kw = dict(probes="all", seed=3, scorer=bright, overrides=TINY, cache_dir=cache, size=32)
    a, b = audit(pipe, pipe, concept, **kw), audit(pipe, pipe, concept, **kw)
    out = str(tmp_path_factory.mktemp("report") / "rep")
    write_report(a, out)
    return a, b, out


def test_registry_and_budgets():
    assert set(PROBES.names()) == set(ORDER)
    for name in ORDER:
        probe = PROBES.get(name)
        for budget in ("quick", "full"):
            cfg = probe.make_config(budget)
            assert cfg.to_dict()
        with pytest.raises(ConfigError):
            probe.make_config("quick", {"no_such_setting": 1})


def test_every_probe_runs_deterministic_and_writes_images(results):
    a, b, out = results
    assert list(a["probes"]) == list(ORDER)
    for name, p in a["probes"].items():
        assert p["status"] == "ok", (name, p["status"])
        assert p["records"], name
        assert {r["model"] for r in p["records"]} == {"base", "edited"}, name
        assert p["time_s"] >= 0 and p["denoiser_evals"] >= 0
        q = b["probes"][name]
        assert [(r["label"], r["score"], r["hit"]) for r in p["records"]] == \
               [(r["label"], r["score"], r["hit"]) for r in q["records"]], name
        for x, y in zip(a["_images"][name], b["_images"][name]):
            assert np.array_equal(x, y), name
        files = [f for f in os.listdir(os.path.join(out, "images", name)) if f.endswith(".png")]
        assert len(files) == len(p["records"]), name
        assert os.path.exists(os.path.join(out, "images", name, "scores.csv"))
    # null edit: wherever base and edited see the same inputs, the rates agree
    for name in ("standard", "alternatives", "interference", "inpaint", "noise", "guidance", "ringabell"):
        s = a["probes"][name]["summary"]
        assert s["base"]["rate"] == s["edited"]["rate"], name
    assert a["probes"]["guidance"]["extras"]["classifier"]["cached"] is False
    assert b["probes"]["guidance"]["extras"]["classifier"]["cached"] is True
    assert a["probes"]["standard"]["N"] == 2 and a["probes"]["noise"]["N"] == 6


def test_noise_sweep_has_no_nan(results):
    a, _, _ = results
    p = a["probes"]["noise"]
    assert p["extras"]["non_finite_latents"] == 0
    etas = {r["setting"]["eta"] for r in p["records"]}
    assert etas == {1.0, 1.85, 3.0}
    assert all(np.isfinite(im.astype(float)).all() for im in a["_images"]["noise"])
    assert set(p["by_param"]) == {"eta", "scale"}


def test_noise_scale_adds_noise(pipe):
    """scale > 1 changes the image (extra noise), scale 1 is the plain eta step."""
    from concept_edit.core.sampler import sample
    from concept_edit.eval.probes.noise import extra_noise_fn

    kw = dict(seed=0, eta=1.5, output_type="latent", height=32, width=32)
    a = sample(pipe, ["a circle"], **kw).latents
    b = sample(pipe, ["a circle"], guidance_fn=extra_noise_fn(pipe.scheduler, 1.5, 1.0, [0]), **kw).latents
    c = sample(pipe, ["a circle"], guidance_fn=extra_noise_fn(pipe.scheduler, 1.5, 1.5, [0]), **kw).latents
    assert torch.equal(a, b) and not torch.allclose(a, c) and torch.isfinite(c).all()


def test_inversion_lowers_its_loss(pipe, concept):
    from concept_edit.eval.probes._base import TokenPatch
    from concept_edit.eval.probes.inversion import InversionConfig, invert

    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 16, 16) * 0.5
    patch = TokenPatch(pipe)
    cfg = InversionConfig(steps=25, batch=2, lr=0.05, eval_samples=4, init_word="object")
    vecs, losses, before, after = invert(pipe, x0, concept.prompt_list(patch.word), patch, cfg, 32, 0)
    assert after < before, (before, after)
    assert len(losses) == 25 and all(np.isfinite(losses))
    assert not torch.equal(vecs[0], patch.word_vector("object")[0])


def test_attack_stops_early_when_the_scorer_says_success(pipe, concept):
    from concept_edit.eval.probes import attack as A

    calls = {"n": 0}

    def yes(images):
        calls["n"] += len(images)
        return ["circle"] * len(images)

    res = audit(pipe, pipe, concept, probes="attack", scorer=yes, size=32,
                overrides={"attack": {"prompts": 1, "k": 2, "steps": 50, "check_every": 1}})
    at = res["probes"]["attack"]["extras"]["attacks"][0]
    assert at["success"] and at["pre_attack"] and at["steps_run"] == 0 and len(at["history"]) == 1

    seen = {"n": 0}

    def second_check(images):  # success at the second check (after check_every optimisation steps)
        seen["n"] += 1
        return ["circle" if seen["n"] == 2 else "square"] * len(images)

    res = audit(pipe, pipe, concept, probes="attack", scorer=second_check, size=32,
                overrides={"attack": {"prompts": 1, "k": 2, "steps": 50, "check_every": 2, "batch": 1}})
    at = res["probes"]["attack"]["extras"]["attacks"][0]
    assert at["success"] and not at["pre_attack"] and at["steps_run"] == 2
    assert at["adversarial_prompt"].endswith("a circle") and at["adversarial_prompt"] != "a circle"
    assert abs(float(A.project_simplex(torch.randn(3, 7)).sum(-1).mean()) - 1) < 1e-5


def test_report_renders_and_numbers_equal_the_json(results):
    _, _, out = results
    with open(os.path.join(out, "results.json")) as f:
        data = json.load(f)
    page = open(os.path.join(out, "report.html")).read()
    cells = dict(re.findall(r'data-key="([^"]+)">([^<]*)<', page))
    n = 0
    for name, p in data["probes"].items():
        for model in ("base", "edited"):
            for k in ("rate", "best_of_n"):
                assert cells[f"{name}.{model}.{k}"] == fmt(p["summary"][model][k])
                n += 1
            for key, v in p["by_setting"][model].items():
                if len(p["by_setting"][model]) > 1 or key != "-":
                    assert cells[f"{name}.setting.{key}.{model}"] == fmt(v)
        assert cells[f"{name}.denoiser_evals"] == fmt(p["denoiser_evals"])
        for r in p["records"]:
            assert os.path.exists(os.path.join(out, r["image"]))
    assert n == 4 * len(data["probes"])
    assert page.count("<svg") == sum(len(p["sweep"]) for p in data["probes"].values())
    assert "data:image/png;base64," in page and "src='http" not in page and "<script" not in page
    assert not [f for f in os.listdir(os.path.dirname(out)) if f.startswith(".tmp")]


def test_concept_yaml_typo_is_one_line(tmp_path, capsys):
    from concept_edit.cli.main import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: circle\ntemplate: ['a {}']\nlabels: [circle]\n")
    with pytest.raises(ConfigError) as e:
        load_concept(str(bad))
    assert "\n" not in str(e.value) and "'templates'" in str(e.value) and str(bad) in str(e.value)
    with pytest.raises(SystemExit) as ex:
        main(["audit", "--concept", str(bad), "--report", str(tmp_path / "rep")])
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'templates'" in err
    bad.write_text("name: circle\nlabels: [circle]\ntarget: cirle\n")
    with pytest.raises(ConfigError, match="not among labels"):
        load_concept(str(bad))
    shipped = load_concept(os.path.join(os.path.dirname(__file__), "..", "configs", "audit", "circle.yaml"))
    assert shipped.target == "circle" and len(shipped.prompt_list()) == len(shipped.templates)


def test_cli_audit_on_tiny(tiny_dirs, tmp_path, capsys):
    from concept_edit.cli.main import main

    rep = tmp_path / "rep"
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("name: circle\ntemplates: ['a {}']\nscorer: toy\n"
                         "labels: [circle, square, triangle, star, none]\n"
                         "probes: {standard: {prompts: 1, seeds: 2}}\n")
    assert main(["audit", "--model", tiny_dirs("sd1"), "--concept", str(yaml_path), "--probes", "standard",
                 "--negative-prompt", "circle", "--set", "standard.seeds=1", "--report", str(rep)]) == 0
    out = capsys.readouterr().out
    assert "standard" in out and (rep / "report.html").exists()
    data = json.loads((rep / "results.json").read_text())
    assert data["negative_prompt"] == "circle" and data["probes"]["standard"]["config"]["seeds"] == 1
    assert data["scorer"] == "toy" and all(r["score"] is not None for r in data["probes"]["standard"]["records"])


def test_audit_shards_sampling_under_accelerate_launch(tiny_dirs, tmp_path):
    """Two CPU processes under ``accelerate launch`` sample every other batch; rank 0 writes the
    report, whose rates and images equal a one-process run's (the same seed per image)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=repo)
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("name: circle\ntemplates: ['a {}', 'a red {}']\nscorer: toy\n"
                         "labels: [circle, square, triangle, star, none]\n"
                         "probes: {standard: {prompts: 2, seeds: 2}, completion: {prompts: 1, seeds: 2, ks: [1]}}\n")
    args = ["audit", "--model", tiny_dirs("sd1"), "--concept", str(yaml_path), "--probes", "standard,completion",
            "--batch", "1", "--device", "cpu"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port), "-m", "concept_edit.cli.main"]
    r = subprocess.run(launch + args + ["--report", str(tmp_path / "two")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("total ") == 1                      # rank 0 reports, once
    r = subprocess.run([sys.executable, "-m", "concept_edit.cli.main"] + args + ["--report", str(tmp_path / "one")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    two, one = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("two", "one"))
    assert (two["processes"], one["processes"]) == (2, 1)
    for name in ("standard", "completion"):
        assert two["probes"][name]["summary"] == one["probes"][name]["summary"]
        assert [x["label"] for x in two["probes"][name]["records"]] == [x["label"] for x in one["probes"][name]["records"]]
        files = sorted(os.listdir(tmp_path / "one" / "images" / name))
        assert files and files == sorted(os.listdir(tmp_path / "two" / "images" / name))
        for f in files:
            if f.endswith(".png"):
                assert (tmp_path / "one" / "images" / name / f).read_bytes() == \
                    (tmp_path / "two" / "images" / name / f).read_bytes(), f


@pytest.mark.parametrize("family", ["sd2", "sdxl", "sd3", "flux", "pixart"])
def test_every_probe_on_every_family(tiny_dirs, concept, family, tmp_path):
    """The same audit on each tiny family (SD1 is the module's fixture): every probe runs or says
    in one line why it does not apply to this family, and the report is written."""
    from concept_edit.core.loading import load_pipeline

    pipe = load_pipeline(tiny_dirs(family))
    res = audit(pipe, pipe, concept, probes="all", seed=3, scorer=bright, overrides=TINY,
                cache_dir=str(tmp_path / "cache"), size=32)
    status = {n: p["status"] for n, p in res["probes"].items()}
    assert set(status) == set(ORDER)
    ran = [n for n, s in status.items() if s == "ok"]
    assert {"standard", "completion", "inpaint", "ringabell", "interference", "alternatives"} <= set(ran), status
    for n, s in status.items():
        assert s == "ok" or (s.startswith("skipped: ") and "\n" not in s), (n, s)
    for n in ran:
        recs = res["probes"][n]["records"]
        assert recs and all(r["label"] in ("circle", "square") for r in recs if r.get("label") is not None), n
    write_report(res, str(tmp_path / "rep"))
    assert (tmp_path / "rep" / "report.html").exists()


def test_alternatives_reports_what_replaces_the_concept(results):
    """The replaced samples' label shares (issue 14's replacement distribution) in the extras."""
    from concept_edit.eval.probes.alternatives import replacement

    assert replacement({"circle": 2, "star": 6, "square": 2}, "circle") == \
        {"n": 8, "shares": {"star": 0.75, "square": 0.25}, "top": "star", "top_share": 0.75}
    assert replacement({"circle": 4}, "circle") == {"n": 0, "shares": {}, "top": None, "top_share": 0.0}
    a, _, _ = results
    ex = a["probes"]["alternatives"]["extras"]
    for model in ("base", "edited"):
        rb, hist = ex["replaced_by"][model], ex["labels"][model]
        assert rb["n"] == sum(v for k, v in hist.items() if k != "circle")
        assert rb["n"] == 0 or abs(sum(rb["shares"].values()) - 1) < 1e-3
