"""The app's first-start examples: a UCE erase of 'circle' and a size slider (copied from out/
when one was trained there, else trained for a few steps), made once on an empty artifacts folder.

Example::

    >>> import concept_edit as ce
    >>> from app_engine import Engine
    >>> from app_examples import make_examples
    >>> make_examples(Engine(ce.load(), "out/app-artifacts"), iterations=100)     # doctest: +SKIP
"""
from __future__ import annotations

import os
import shutil
import time

from app_engine import EXT, REPO, TRAIN_RECIPE, Engine, check_safetensors_header
from app_tabs import one_line as _one_line

UCE_EXAMPLE = dict(mode="erase", edit=["circle"], guide=[""], guide_eta=1.0,
                   preserve=["square", "triangle", "star"], token_policy="last+eos", sites="text_kv",
                   lamb=0.5, templates=["{}", "a {}", "a large {}", "a small {}", "a red {}", "a green {}",
                                        "a blue {}", "a yellow {}", "a {} on a plain background",
                                        "a {} on a striped background", "a {} on a dotted background"])
SLIDER_EXAMPLE = dict(name="size", prompts=[dict(target="a {}", positive="a large {}",
                                                 unconditional="a small {}", action="enhance", guidance=4.0)],
                      preservation=["circle", "square", "triangle", "star", "red circle", "blue square",
                                    "green triangle", "yellow star"], bank_size=8)


# -- first start ----------------------------------------------------------------------------------
def _artifact_files(root: str) -> list[str]:
    return [f for f in os.listdir(root) if f.endswith(EXT) and not f.startswith(".")] if os.path.isdir(root) else []


def find_trained_slider(engine: Engine, name: str = "size", search: str | None = None) -> str | None:
    """The newest slider called ``name`` for this model under ``out/`` (a copy is cheaper than training)."""
    search = search or os.path.join(REPO, "out")
    found = []
    for dirpath, dirs, files in os.walk(search):
        if os.path.realpath(dirpath).startswith(engine.root) or dirpath.count(os.sep) - search.count(os.sep) > 2:
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".") and not d.endswith(".ckpt")]
        for f in files:
            p = os.path.join(dirpath, f)
            if not f.endswith(EXT) or f.startswith(".") or os.path.getsize(p) > 64 * 2**20:
                continue
            try:
                check_safetensors_header(p, f)
                m = engine.ce.read_artifact_meta(p)
            except Exception:
                continue
            base = m.get("base") if isinstance(m.get("base"), dict) else {}
            cfg = m.get("config") if isinstance(m.get("config"), dict) else {}
            if (m.get("method") == "slider" and cfg.get("name") == name
                    and base.get("model") == engine.model.source):
                found.append((os.path.getmtime(p), p))
    return max(found)[1] if found else None


def example_uce(engine: Engine, log=print) -> str:
    """The UCE example: erase 'circle' on the toy world (about a second after the model loads)."""
    method = engine.ce.METHODS.get("uce")
    cfg = method.config.from_dict(dict(UCE_EXAMPLE))
    out = os.path.join(engine.root, "uce-erase-circle" + EXT)
    t0 = time.perf_counter()
    with engine.lock:
        engine._unload_all()
        method.run(engine.model, cfg, progress=False).save(out)
    log(f"[app] example: UCE erase 'circle' in {time.perf_counter() - t0:.1f} s -> {out}")
    return out


def example_slider(engine: Engine, iterations: int = 100, log=print) -> str:
    """The size slider example: copied from out/ when one was trained there, else trained now."""
    found = find_trained_slider(engine, "size")
    out = os.path.join(engine.root, "size" + EXT)
    if found:
        shutil.copyfile(found, out)
        log(f"[app] example: copied the size slider {os.path.relpath(found, REPO)} -> {out}")
        return out
    log(f"[app] example: training a size slider for {iterations} steps (about 1-2 minutes on two "
        "CPU cores; the full recipe: concept-edit slider train configs/sliders/toy-size.yaml)")
    cfg = engine.ce.METHODS.get("slider").config.from_dict(
        dict(TRAIN_RECIPE, **SLIDER_EXAMPLE, iterations=iterations, ddim_steps=engine.steps))
    return os.path.join(engine.root, engine.train_config(cfg, progress=True, stem="size"))


def make_examples(engine: Engine, iterations: int = 100, log=print) -> None:
    """On an empty artifacts folder: the examples (toy world), or how to make artifacts."""
    if _artifact_files(engine.root):
        return
    if not engine.toy:
        log(f"[app] the artifacts folder {engine.root} is empty. Make edits for this model with e.g.\n"
            f"  concept-edit slider train CONFIG.yaml --model MODEL --out {engine.root}/NAME.safetensors\n"
            f"  concept-edit uce --config CONFIG.yaml --model MODEL --out {engine.root}/NAME.safetensors\n"
            "or train a slider in the app's Train tab.")
        return
    log(f"[app] first start: making example artifacts in {engine.root} (skip with --no-examples)")
    for make in (lambda: example_uce(engine, log), lambda: example_slider(engine, iterations, log)):
        try:
            make()
        except Exception as e:  # the app still starts; the Train tab and the CLI can make edits
            log(f"[app] could not make an example ({type(e).__name__}: {_one_line(e)})")
