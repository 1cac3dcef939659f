"""The Gradio app in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright) loads the page, drags a slider, generates, opens the newer tabs and clicks a SliderSpace
direction. Set ``CONCEPT_EDIT_APP_SCREENSHOTS=docs/app`` to also write the README's screenshots.
"""
from __future__ import annotations

import os
import shutil
import time

import pytest

pytest.importorskip("gradio")

from app_ctx import CHROMIUM_ARGS  # noqa: E402


# -- a real browser ------------------------------------------------------------------------------
def _chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _small_png(page, path, **kw):
    from PIL import Image

    page.screenshot(path=str(path), **kw)
    Image.open(path).convert("RGB").quantize(colors=96).save(path, optimize=True)


def screenshot_tabs(page, outdir, sliders_png=None, train_iterations=None):
    """The README's screenshots (docs/app/*.png) of a loaded page: every working tab."""
    os.makedirs(outdir, exist_ok=True)
    if sliders_png:
        shutil.copyfile(sliders_png, os.path.join(outdir, "sliders.png"))
    else:
        _small_png(page, os.path.join(outdir, "sliders.png"), full_page=True)
    page.get_by_role("tab", name="Erasure A/B").click()
    page.get_by_role("button", name="Compare").click()
    page.wait_for_selector("#edit-gallery img", timeout=120_000)
    page.wait_for_timeout(500)
    _small_png(page, os.path.join(outdir, "erasure.png"), full_page=True)
    page.get_by_role("tab", name="Train a slider").click()
    if train_iterations:   # show the progress bar, then the result
        page.locator("#train-iterations input[type=number]").fill(str(train_iterations))
        page.locator("#train-iterations input[type=number]").press("Enter")
        page.get_by_role("button", name="Train").click()
        page.wait_for_selector(".progress-level, .progress-text, .eta-bar", timeout=120_000)
        page.wait_for_timeout(4000)
        _small_png(page, os.path.join(outdir, "train.png"))
        page.wait_for_selector("#train-status :text('Trained')", timeout=600_000)
    else:
        page.wait_for_timeout(500)
        _small_png(page, os.path.join(outdir, "train.png"))
    page.get_by_role("tab", name="Artifacts").click()
    page.wait_for_timeout(500)
    _small_png(page, os.path.join(outdir, "artifacts.png"))


def test_browser_loads_moves_a_slider_generates_and_screenshots(ctx, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' (playwright)")
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium: `make install-test` installs Debian's chromium + chromium-driver")
    shots = os.environ.get("CONCEPT_EDIT_APP_SCREENSHOTS")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            t0 = time.perf_counter()
            page.goto(ctx.url)
            page.wait_for_selector("#slider-image img", timeout=120_000)       # the first image
            first = time.perf_counter() - t0
            src = page.get_attribute("#slider-image img", "src")
            rng = page.locator("#slider-scale-1 input[type=range]")
            lo, hi = float(rng.get_attribute("min")), float(rng.get_attribute("max"))
            assert (lo, hi) == (-2.0, 2.0)                  # narrowed to the picked file's bounds
            assert page.locator("#start-step input[type=range]").get_attribute("max") == str(ctx.engine.steps)
            box = rng.bounding_box()
            at = min(max((float(rng.input_value()) - lo) / (hi - lo), 0.03), 0.97)   # on the track
            x0, y = box["x"] + box["width"] * at, box["y"] + box["height"] / 2
            t1 = time.perf_counter()
            page.mouse.move(x0, y)                                             # on the thumb
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.2, y, steps=10)        # a drag: no request yet
            page.mouse.up()                                                    # release: one request
            page.wait_for_function("s => { const i = document.querySelector('#slider-image img');"
                                   " return i && i.src !== s; }", arg=src, timeout=120_000)
            moved = time.perf_counter() - t1
            scale = float(page.input_value("#slider-scale-1 input[type=number]"))
            assert scale < 0, scale
            page.get_by_role("button", name="Generate").click()
            page.wait_for_selector("#strip-image img", timeout=120_000)
            _small_png(page, tmp_path / "sliders.png", full_page=True)
            assert (tmp_path / "sliders.png").stat().st_size > 10_000
            print(f"\n[browser] page load -> first image {first:.2f} s; slider release -> new image "
                  f"{moved:.2f} s (default {ctx.engine.steps} steps)")
            # the newer tabs render; a click on a SliderSpace direction shows its strip
            page.get_by_role("tab", name="Distillation").click()
            page.wait_for_selector("#distill-base", timeout=30_000)
            page.get_by_role("tab", name="Audit").click()
            page.wait_for_selector("#audit-edit", timeout=30_000)
            page.get_by_role("tab", name="SliderSpace").click()
            page.get_by_role("button", name="Show directions").click()
            page.wait_for_selector("#space-gallery img", timeout=120_000)
            page.locator("#space-gallery img").nth(2).click()               # direction 1
            page.wait_for_selector("#space-strip img", timeout=120_000)
            assert page.input_value("#space-index input[type=number]") == "1"
            if shots:
                screenshot_tabs(page, shots, tmp_path / "sliders.png")
        finally:
            browser.close()
