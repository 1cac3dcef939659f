"""The Gradio app's test fixture and helpers, shared by tests/test_app.py (the API) and
tests/test_app_browser.py (headless Chromium): one in-process launch of app.py on the toy world
for the whole session (10 steps, one image per request). Fixtures: two random-direction sliders
(one with ``scale_bounds`` in its metadata), the app's own UCE example, a K=2 SliderSpace folder of
random rank-4 directions, and a second copy of the toy world standing in as the Distillation tab's
"distilled" model.
"""
from __future__ import annotations

import json
import os
import socket
import sys

import numpy as np
import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import app  # noqa: E402

STEPS = 10
A, B, C = "dir-a.safetensors", "dir-b.safetensors", "bounded.safetensors"
UCE = "uce-erase-circle.safetensors"
SPACE = "space-k2"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _random_slider(model, path, seed, name, extra_lora=None, method="slider"):
    """A LoRA 'slider' with a random direction: visible at scale +-2, made in a second."""
    import torch
    from concept_edit.core.artifacts import save_lora_artifact

    router = model.router
    router.add(name, model.sites("noxattn"), rank=4, alpha=4.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in router.parameters(name, "B"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.03)
    sd = router.state_dict(name, prefix=model.backbone.denoiser)
    router.remove(name)
    lora = {"rank": 4, "alpha": 4.0, "group": "noxattn", "start": 0.2, "name": name,
            "recommended_scales": [-2, 2], **(extra_lora or {})}
    save_lora_artifact(model.pipe, sd, str(path), method, {"name": name}, lora=lora)


def _random_space(model, out, k=2, seed=10):
    """A SliderSpace folder as `concept-edit sliderspace discover` writes it (manifest.json +
    slider_XX.safetensors), with random directions instead of trained ones (no sheet.png)."""
    out.mkdir()
    for i in range(k):
        _random_slider(model, out / f"slider_{i:02d}.safetensors", seed + i, f"slider_{i:02d}", method="sliderspace")
    manifest = {"edits": [{"file": f"slider_{i:02d}.safetensors", "method": "sliderspace", "kind": "lora"}
                          for i in range(k)],
                "method": "sliderspace", "model": model.source, "family": model.backbone.name,
                "prompts": ["a circle"], "components": k,
                "sliders": [{"name": f"slider_{i:02d}", "component": i, "explained_variance": 0.1,
                             "moves": "colour" if i == 0 else None} for i in range(k)]}
    (out / "manifest.json").write_text(json.dumps(manifest))


def launch(tmp_path_factory):
    """The in-process app (tests/conftest.py's session fixture ``ctx`` yields from this)."""
    import concept_edit as ce

    root = tmp_path_factory.mktemp("app")
    old_tmp = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio-cache")
    arts = root / "artifacts"
    arts.mkdir()
    model = ce.load()
    _random_slider(model, arts / A, 1, "dir_a")
    _random_slider(model, arts / B, 2, "dir_b")
    _random_slider(model, arts / C, 3, "bounded", {"scale_bounds": [-2, 2]})
    _random_space(model, arts / SPACE)
    # a second copy of the toy world stands in as the "distilled" model
    engine = app.Engine(model, str(arts), app.Limits(queue_size=16), distilled=ce.load())
    app.example_uce(engine, log=lambda *a: None)
    demo = app.build_app(engine)
    port = _free_port()
    # the launch of `python app.py` (serve) is demo.launch(prevent_thread_lock=True, ...) here
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                ssr_mode=False, theme=app.theme(), css=app.CSS)
    url = f"http://127.0.0.1:{port}/"
    client = gradio_client.Client(url, verbose=False, download_files=str(root / "downloads"))
    yield type("Ctx", (), dict(root=root, arts=arts, engine=engine, demo=demo, url=url, client=client,
                               model=model))
    demo.close()
    if old_tmp is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = old_tmp


def slide_kwargs(prompt="a red circle", seed=0, steps=STEPS, start=2, sliders=()):
    kw = dict(prompt=prompt, seed=seed, steps=steps, start_step=start, guidance=5.0, size=64)
    for i in range(app.N_SLOTS):
        name, scale = sliders[i] if i < len(sliders) else ("", 0.0)
        kw[f"slider_{i + 1}"], kw[f"scale_{i + 1}"] = name, scale
    return kw


def _bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _pixels(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _refused(fn, *words):
    """The call fails with a clean error whose message holds every word."""
    with pytest.raises(Exception) as e:
        fn()
    msg = str(e.value)
    assert all(w.lower() in msg.lower() for w in words), msg
    return msg


def _files(arts) -> set[str]:
    return {f for f in os.listdir(arts) if not f.startswith(".")}
