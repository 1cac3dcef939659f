"""The Gradio app (app.py): API tests with gradio_client against an in-process launch (the
``ctx`` fixture and helpers are in tests/app_ctx.py; the real-browser test is
tests/test_app_browser.py).
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from app_ctx import (A, B, C, SPACE, STEPS, UCE, _bytes, _files, _free_port, _pixels,  # noqa: E402
                     _refused, app, gradio_client, slide_kwargs)


# -- API ----------------------------------------------------------------------------------------
def test_every_endpoint_has_a_stable_api_name(ctx):
    api = ctx.client.view_api(return_format="dict", print_info=False)
    named = set(api["named_endpoints"])
    assert {f"/{n}" for n in app.API_NAMES} <= named, named
    params = [p["parameter_name"] for p in api["named_endpoints"]["/slide"]["parameters"]]
    assert params[:6] == ["prompt", "seed", "steps", "start_step", "guidance", "size"]


def test_slide_base_and_slider_side_by_side(ctx):
    base, img, info = ctx.client.predict(**slide_kwargs(sliders=[(A, 2.0)]), api_name="/slide")
    assert _pixels(base).shape == (64, 64, 3)
    assert np.abs(_pixels(base).astype(int) - _pixels(img)).mean() > 1.0   # the slider acts
    assert "timestep" in info and f"start step 2 of {STEPS}" in info
    # resumed from the base run's state at the start step: the image of a full run with the
    # slider switched off for its first steps (generate + the artifact's start schedule)
    import concept_edit as ce

    with ctx.engine.lock:
        ctx.engine._unload_all()
        h = ce.apply_artifact(ctx.model.pipe, str(ctx.arts / A), scale=2.0, start=2 / STEPS, name="ref")
        try:
            ref = ce.generate(ctx.model.pipe, ce.SampleSettings(prompt="a red circle", n=1, seed=0, steps=STEPS,
                                                                guidance=5.0, height=64, width=64), progress=False)
        finally:
            h.remove()
    assert np.array_equal(ref[0], _pixels(img))
    base0, img0, _ = ctx.client.predict(**slide_kwargs(sliders=[(A, 0.0)]), api_name="/slide")
    assert _bytes(base0) == _bytes(base) and _bytes(img0) == _bytes(base)    # scale 0: the base
    # the start past the last step: the slider never acts
    _, late, info = ctx.client.predict(**slide_kwargs(start=STEPS, sliders=[(A, 2.0)]), api_name="/slide")
    assert _bytes(late) == _bytes(base) and "never act" in info
    # more steps than the page's default (the widgets' server-side bounds are the widest)
    _, _, info = ctx.client.predict(**slide_kwargs(steps=ctx.engine.steps + 2, start=ctx.engine.steps + 1,
                                                   sliders=[(A, 1.0)]), api_name="/slide")
    assert f"start step {ctx.engine.steps + 1} of {ctx.engine.steps + 2}" in info


def test_strip_over_scales(ctx):
    path = ctx.client.predict(**slide_kwargs(sliders=[(A, 1.0), (B, 1.0)]), api_name="/strip")
    grid = _pixels(path)
    assert grid.shape[1] > 5 * 128 and grid.shape[0] > 128       # five labelled tiles in a row


def test_concurrent_requests_equal_one_at_a_time(ctx):
    """8 concurrent API requests (different scales, seeds, starts; some compose two sliders)
    return byte-identical images to the same requests one at a time; the same holds for 8
    threads calling the engine directly (no queue: the lock alone keeps them apart)."""
    reqs = [slide_kwargs(seed=i, start=i % 3, sliders=[(A, s)] + ([(B, -s)] if i % 2 else []))
            for i, s in enumerate([-2.0, -1.5, -1.0, -0.5, 0.5, 1.0, 1.5, 2.0])]
    ctx.engine._base.clear()
    jobs = [ctx.client.submit(**kw, api_name="/slide") for kw in reqs]
    together = [job.result(timeout=300) for job in jobs]
    ctx.engine._base.clear()
    alone = [ctx.client.predict(**kw, api_name="/slide") for kw in reqs]
    for t, a in zip(together, alone):
        assert _bytes(t[0]) == _bytes(a[0]) and _bytes(t[1]) == _bytes(a[1])
    assert len({_bytes(a[1]) for a in alone}) == len(reqs)       # the requests really differ

    def call(kw):
        pairs = [(kw[f"slider_{i}"], kw[f"scale_{i}"]) for i in range(1, 5)]
        return ctx.engine.slide(kw["prompt"], kw["seed"], kw["steps"], kw["start_step"], kw["guidance"],
                                kw["size"], pairs)[1]

    out = [None] * len(reqs)
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, call(reqs[i]))) for i in range(len(reqs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    for i, kw in enumerate(reqs):
        assert np.array_equal(out[i], _pixels(alone[i][1])), f"request {i} differs when threaded"


def test_paths_outside_the_artifacts_folder_are_refused(ctx, tmp_path):
    c = ctx.client
    for bad in ("../" + A, "/etc/passwd", str(ctx.arts / A) + "/../../x.safetensors", "sub/../../../x.safetensors"):
        _refused(lambda: c.predict(**slide_kwargs(sliders=[(bad, 1.0)]), api_name="/slide"), "outside")
        _refused(lambda: c.predict(edit=bad, prompt="a circle", seed=0, n=1, steps=STEPS, api_name="/erase"),
                 "outside")
    outside = tmp_path / "outside.safetensors"            # a real artifact, but outside the folder
    shutil.copyfile(ctx.arts / A, outside)
    link = ctx.arts / "link.safetensors"
    os.symlink(outside, link)
    try:
        _refused(lambda: c.predict(**slide_kwargs(sliders=[(link.name, 1.0)]), api_name="/slide"), "outside")
        _refused(lambda: c.predict(**slide_kwargs(sliders=[(str(outside), 1.0)]), api_name="/slide"), "outside")
    finally:
        link.unlink()
    _refused(lambda: c.predict(**slide_kwargs(sliders=[("nope.safetensors", 1.0)]), api_name="/slide"),
             "no such file")
    _refused(lambda: c.predict(**slide_kwargs(sliders=[(UCE, 1.0)]), api_name="/slide"), "not a slider")


def test_bad_input_gets_a_clean_message_and_the_app_keeps_serving(ctx):
    c, before = ctx.client, _files(ctx.arts)
    _refused(lambda: c.predict(**slide_kwargs(prompt="   "), api_name="/slide"), "prompt is empty")
    _refused(lambda: c.predict(**slide_kwargs(sliders=[(A, 7.0)]), api_name="/slide"), "7")
    # inside the page's -6..6 but outside the file's own bounds (-2..2): the server checks it
    _refused(lambda: c.predict(**slide_kwargs(sliders=[(A, 0.0), (C, 3.0)]), api_name="/slide"),
             "between -2 and 2")
    _refused(lambda: c.predict(**slide_kwargs(steps=500), api_name="/slide"), "500", "100")  # gradio's check
    _refused(lambda: c.predict(**slide_kwargs(start=STEPS + 1), api_name="/slide"), "start step")
    _refused(lambda: c.predict(**slide_kwargs(sliders=[(A, 1.0), (A, 1.0)]), api_name="/slide"), "twice")
    _refused(lambda: c.predict(edit=UCE, prompt="a circle", seed=0, n=100, steps=STEPS, api_name="/erase"),
             "100", str(ctx.engine.limits.max_n))
    _refused(lambda: c.predict(name="x", target="a {}", positive="", negative="a small {}", fill="circle",
                               iterations=2, api_name="/train"), "positive prompt is empty")
    _refused(lambda: c.predict(name="x", target="a {}", positive="a large {}", negative="a small {}",
                               fill="circle", iterations=10**6, api_name="/train"),
             str(ctx.engine.limits.max_iterations))
    base, img, _ = c.predict(**slide_kwargs(sliders=[(A, 1.0)]), api_name="/slide")   # still serving
    assert os.path.exists(img)
    assert _files(ctx.arts) == before


def test_uploads_must_be_our_safetensors(ctx, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    c, before = ctx.client, _files(ctx.arts)
    up = lambda p: c.predict(gradio_client.handle_file(str(p)), api_name="/upload")  # noqa: E731
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, not tensors")
    _refused(lambda: up(text), "not a safetensors file")
    pickle = tmp_path / "pickled.safetensors"
    torch.save({"w": torch.zeros(2)}, pickle)
    _refused(lambda: up(pickle), "pickled", "never unpickles")
    pt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pt)
    _refused(lambda: up(pt), ".safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    _refused(lambda: up(plain), "no concept_edit metadata")
    # an artifact for another model: same file, other base weights in its header
    with safe_open(str(ctx.arts / A), "pt") as f:
        meta = dict(f.metadata())
    ce_meta = json.loads(meta["concept_edit"])
    ce_meta["base"]["fingerprint"] = "0" * 16
    other = tmp_path / "other-model.safetensors"
    save_file(load_file(str(ctx.arts / A)), other, metadata={**meta, "concept_edit": json.dumps(ce_meta)})
    _refused(lambda: up(other), "other base weights")
    ce_meta["base"]["family"] = "sdxl"
    save_file(load_file(str(ctx.arts / A)), other, metadata={**meta, "concept_edit": json.dumps(ce_meta)})
    _refused(lambda: up(other), "sdxl")
    assert _files(ctx.arts) == before                                # nothing was written
    good = tmp_path / "my slider!.safetensors"
    shutil.copyfile(ctx.arts / A, good)
    msg = up(good)
    assert "my-slider.safetensors" in msg
    rows = c.predict(api_name="/artifacts")
    assert "my-slider.safetensors" in [r[0] for r in rows["data"]]
    c.predict(**slide_kwargs(sliders=[("my-slider.safetensors", 1.0)]), api_name="/slide")
    os.remove(ctx.arts / "my-slider.safetensors")


def test_erasure_ab_with_classifier_labels(ctx):
    base, edited, text = ctx.client.predict(edit=UCE, prompt="a circle", seed=0, n=2, steps=STEPS,
                                            api_name="/erase")
    assert len(base) == len(edited) == 2
    assert all(item["caption"] and " · " in item["caption"] for item in base + edited)
    assert "'circle' seen by the toy classifier" in text
    assert _bytes(base[0]["image"]) != _bytes(edited[0]["image"])
    _refused(lambda: ctx.client.predict(edit=A, prompt="a circle", seed=0, n=1, steps=STEPS, api_name="/erase"),
             "is a slider")


def test_train_a_slider_and_it_appears_in_the_list(ctx):
    msg = ctx.client.predict(name="tiny test", target="a {}", positive="a large {}", negative="a small {}",
                             fill="circle", iterations=2, api_name="/train")
    assert "slider-tiny-test.safetensors" in msg
    rows = ctx.client.predict(api_name="/artifacts")["data"]
    row = next(r for r in rows if r[0] == "slider-tiny-test.safetensors")
    assert row[1:3] == ["lora", "slider"]
    assert ("slider-tiny-test.safetensors", "slider-tiny-test.safetensors") in ctx.engine.slider_choices()
    ctx.client.predict(**slide_kwargs(sliders=[("slider-tiny-test.safetensors", 2.0)]), api_name="/slide")


def test_a_full_queue_refuses_cleanly(ctx):
    """With the model busy (its lock held here), one request runs, one waits, the rest are
    refused with gradio's 'queue is full'; then the app serves again."""
    small = app.build_app(ctx.engine, queue_size=1)
    port = _free_port()
    small.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, ssr_mode=False)
    try:
        c = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False,
                                 download_files=str(ctx.root / "downloads-small"))
        with ctx.engine.lock:
            jobs = [c.submit(**slide_kwargs(seed=100 + i, sliders=[(A, 1.0)]), api_name="/slide") for i in range(5)]
            deadline = time.time() + 60
            while sum(j.done() for j in jobs) < 3 and time.time() < deadline:   # the refused ones
                time.sleep(0.1)
        errors, served = [], 0
        for j in jobs:
            try:
                j.result(timeout=300)
                served += 1
            except Exception as e:  # noqa: BLE001 - the client's error type for a refused job
                errors.append(str(e))
        # one runs (blocked on the lock) and one waits; if the second arrived before the first
        # left the queue it is refused too: either way a full queue refusing cleanly
        assert served in (1, 2) and len(errors) == 5 - served, (errors, served)
        assert all("full" in e.lower() for e in errors), errors
        assert os.path.exists(c.predict(**slide_kwargs(sliders=[(A, 1.0)]), api_name="/slide")[1])
    finally:
        small.close()


def test_first_start_examples_and_path_helpers(ctx, tmp_path):
    """An empty folder on another model gets instructions, not a crash; names are sanitised."""
    assert app.safe_name("../../etc/passwd") == "etc-passwd"
    assert app.safe_name("") == "artifact"
    e = app.Engine(ctx.model, str(tmp_path / "empty"))
    e.toy = False
    said = []
    app.make_examples(e, log=said.append)
    assert "empty" in said[0] and not os.listdir(tmp_path / "empty")


# -- SliderSpace browser, Distillation, Audit ----------------------------------------------------
def test_sliderspace_browser_gallery_strip_and_compose(ctx):
    c = ctx.client
    gallery, sheet, info = c.predict(space=SPACE, prompt="a circle", seed=0, scale=2.0, api_name="/space_gallery")
    assert len(gallery) == 3                                  # the base, then one image per direction
    assert gallery[0]["caption"].startswith("base") and gallery[1]["caption"].startswith("0: slider_00 · colour")
    imgs = [_pixels(g["image"]) for g in gallery]
    assert all(im.shape == (64, 64, 3) for im in imgs)
    assert np.abs(imgs[0].astype(int) - imgs[1]).mean() > 1.0 and np.abs(imgs[0].astype(int) - imgs[2]).mean() > 1.0
    assert sheet is None and "2 directions" in info
    strip = _pixels(c.predict(space=SPACE, index=1, prompt="a circle", seed=0, seeds=2, scale=2.0,
                              api_name="/space_strip"))
    assert strip.shape[1] > 5 * 96 and 2 * 96 < strip.shape[0] < 3 * 96 + 60     # 5 scales x 2 seeds
    base, mixed, info = c.predict(space=SPACE, prompt="a circle", seed=0, direction_1="slider_00", scale_1=2.0,
                                  direction_2="slider_01", scale_2=-1.0, api_name="/space_compose")
    assert _bytes(base) == _bytes(gallery[0]["image"])
    assert np.abs(_pixels(base).astype(int) - _pixels(mixed)).mean() > 1.0
    assert "slider_00 @ 2" in info and "slider_01 @ -1" in info
    _, same, _ = c.predict(space=SPACE, prompt="a circle", seed=0, direction_1="slider_00", scale_1=2.0,
                           api_name="/space_compose")
    assert np.array_equal(_pixels(same), imgs[1])           # one direction: the gallery's image
    _refused(lambda: c.predict(space=SPACE, prompt="a circle", seed=0, direction_1="slider_07", scale_1=1.0,
                               api_name="/space_compose"), "not a slider of")
    _refused(lambda: c.predict(space=SPACE, index=2, prompt="a circle", seed=0, seeds=1, scale=2.0,
                               api_name="/space_strip"), "direction", "between 0 and 1")
    _refused(lambda: c.predict(space=SPACE, prompt="a circle", seed=0, scale=50.0, api_name="/space_gallery"),
             "50")


def test_sliderspace_paths_outside_the_artifacts_folder_are_refused(ctx, tmp_path):
    c = ctx.client
    gal = lambda name: c.predict(space=name, prompt="a circle", seed=0, scale=2.0, api_name="/space_gallery")  # noqa: E731
    for bad in ("..", "../" + ctx.arts.name, "/etc", str(tmp_path), f"{SPACE}/../../x"):
        _refused(lambda: gal(bad), "outside")
    _refused(lambda: gal(".app-cache"), "hidden")
    _refused(lambda: gal("nope"), "not a SliderSpace folder")
    outside = tmp_path / "outside-space"                       # a valid space, but outside the folder
    shutil.copytree(ctx.arts / SPACE, outside)
    link = ctx.arts / "linked-space"
    os.symlink(outside, link)
    try:
        _refused(lambda: gal(link.name), "outside")
    finally:
        link.unlink()
    # a manifest inside the folder whose slider file points out of it
    evil = ctx.arts / "evil-space"
    evil.mkdir()
    try:
        (evil / "manifest.json").write_text(json.dumps({"edits": [{"file": "../" + A}]}))
        _refused(lambda: gal(evil.name), "names no .safetensors file of the folder")
        os.symlink(outside / "slider_00.safetensors", evil / "slider_00.safetensors")
        (evil / "manifest.json").write_text(json.dumps({"edits": [{"file": "slider_00.safetensors"}]}))
        _refused(lambda: gal(evil.name), "outside")
    finally:
        shutil.rmtree(evil)
    assert [v for _, v in ctx.engine.space_choices()] == [SPACE]


def test_distillation_base_distilled_hybrid_with_diversity(ctx, tmp_path):
    c = ctx.client
    base, dist, hybrid, table, text = c.predict(prompt="a circle", seed=0, n=4, switch=1, steps=4,
                                                api_name="/distill")
    assert len(base) == len(dist) == len(hybrid) == 4
    assert all(" · " in g["caption"] for g in base + dist + hybrid)       # toy classifier labels
    rows = table["data"]
    assert [r[0] for r in rows] == ["base", "distilled", "hybrid"] and table["headers"] == app.DIVERSITY_COLS
    assert all(r[1] == 4 and all(isinstance(v, (int, float)) for v in r[2:]) for r in rows)
    assert "4-step schedule (t = " in text and "1 base step(s), then 3 distilled" in text
    # the "distilled" model is the toy world itself: the three sets are the same images, and
    # the four seeds differ from each other
    for i in range(4):
        assert _bytes(base[i]["image"]) == _bytes(dist[i]["image"]) == _bytes(hybrid[i]["image"])
    assert len({_bytes(g["image"]) for g in base}) == 4
    assert rows[0][2:] == rows[1][2:] == rows[2][2:]
    _refused(lambda: c.predict(prompt="a circle", seed=0, n=4, switch=5, steps=4, api_name="/distill"),
             "switch step", "between 0 and 4")
    with pytest.raises(app.AppError, match="number of images"):     # the page's slider stops at 2 too
        ctx.engine.distill("a circle", 0, 1, 1, 4)
    # no distilled model: a one-line note on how to make one
    e = app.Engine(ctx.model, str(tmp_path / "arts"))
    note = e.distill_note()
    assert "concept-edit toyworld distill" in note and "\n" not in note
    with pytest.raises(app.AppError, match="concept-edit toyworld distill"):
        e.distill("a circle", 0, 4, 1, 4)


def test_audit_quick_on_the_uce_example(ctx):
    c = ctx.client
    summary, table, files, report = c.predict(edit=UCE, concept="circle", probes=["standard", "alternatives"],
                                              seed=0, api_name="/audit")
    assert "--budget quick" in summary and "standard" in summary
    rows = {r[0]: r for r in table["data"]}
    assert set(rows) == {"standard", "alternatives"} and table["headers"] == app.AUDIT_COLS
    std = dict(zip(app.AUDIT_COLS, rows["standard"]))
    assert std["status"] == "ok" and std["base rate"] > std["edited rate"]      # UCE erased circle
    names = sorted(os.path.basename(f) for f in files)
    assert names == ["report.html", "results.json"]
    res = json.loads(open(next(f for f in files if f.endswith(".json"))).read())
    assert res["budget"] == "quick" and list(res["probes"]) == ["standard", "alternatives"]
    assert res["edits"][0]["file"] == UCE
    assert "<iframe" in report and "Erasure audit: circle" in report
    _refused(lambda: c.predict(edit=A, concept="circle", probes=["standard"], seed=0, api_name="/audit"),
             "is a slider")
    _refused(lambda: c.predict(edit="../" + UCE, concept="circle", probes=["standard"], seed=0,
                               api_name="/audit"), "outside")
    _refused(lambda: c.predict(edit=UCE, concept="circle", probes=[], seed=0, api_name="/audit"),
             "at least one probe")
    with pytest.raises(app.AppError, match="unknown audit concept"):
        ctx.engine.audit(UCE, "../../etc/passwd", ["standard"], 0, progress=False)
    # the time bound stops an audit at its first sampling step past it
    old, ctx.engine.limits.max_audit_s = ctx.engine.limits.max_audit_s, 0.0
    try:
        with pytest.raises(app.AppError, match="bound"):
            ctx.engine.audit(UCE, "circle", ["standard"], 0, progress=False)
    finally:
        ctx.engine.limits.max_audit_s = old
