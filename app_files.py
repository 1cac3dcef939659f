"""What writes into the app's artifacts folder: slider training from the Train tab (on a second
copy of the model, so the page keeps serving) and checked uploads. Mixed into
``app_engine.Engine``, which holds the state these methods read (limits, root, locks, model).

Example::

    >>> engine.train("size", "a {}", "a large {}", "a small {}", "circle;square", 100)   # doctest: +SKIP
    'slider-size.safetensors'
    >>> engine.upload("/tmp/gradio/x.safetensors", "my-slider.safetensors")           # doctest: +SKIP
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time

from app_tabs import AppError, check_int, check_text, one_line as _one_line

EXT = ".safetensors"
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
# Settings of sliders trained from the form (the toy-size recipe; the form sets the prompts).
TRAIN_RECIPE = dict(sites="noxattn", rank=4, alpha=1.0, lr=2e-3, optimizer="adamw", batch_size=4,
                    sampler="bank", bank_size=4, bank_refresh=200, sample_guidance=3.0, start=0.24,
                    train_after_start=True, seed=0)


def check_safetensors_header(path: str, shown: str) -> dict:
    """Parse a safetensors header by hand (never unpickles, never loads tensors); returns it."""
    from concept_edit.core.io import ArtifactError, read_header

    try:
        n, header = read_header(path, shown)
    except ArtifactError as e:
        raise AppError(str(e)) from None
    size = os.path.getsize(path)
    data = size - 8 - n
    for k, v in header.items():
        if k == "__metadata__":
            continue
        if not isinstance(v, dict) or v.get("dtype") not in FLOAT_DTYPES:
            raise AppError(f"{shown}: tensor {k!r} is not a float tensor; not a concept_edit artifact")
        off = v.get("data_offsets")
        if (not isinstance(off, list) or len(off) != 2 or not all(isinstance(o, int) for o in off)
                or not 0 <= off[0] <= off[1] <= data):
            raise AppError(f"{shown}: tensor {k!r} points outside the file; damaged file")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or "concept_edit" not in meta:
        raise AppError(f"{shown} has no concept_edit metadata: only artifacts written by concept_edit "
                       "can be used here (make one with concept-edit, or in the Train tab)")
    return header


def safe_name(name: str, default: str = "artifact") -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_")[:60]
    return stem or default


class FilesMixin:
    # -- training -----------------------------------------------------------------------------
    def unique_path(self, stem: str) -> str:
        cand, i = stem + EXT, 1
        while os.path.lexists(os.path.join(self.root, cand)):
            cand, i = f"{stem}-{i}{EXT}", i + 1
        return os.path.join(self.root, cand)

    def _trainer(self):
        """A second copy of the model for training, so that the page keeps serving meanwhile."""
        if self._train_model is None:
            self._train_model = self.ce.load(**self.load_args)
        return self._train_model

    def slider_config(self, name, target, positive, negative, fill, iterations, **extra):
        L = self.limits
        target = check_text(target, "target prompt", 200, "a {}")
        positive = check_text(positive, "positive prompt", 200, "a large {}")
        negative = check_text(negative, "negative prompt", 200, "a small {}")
        iterations = check_int(iterations, "iterations", 1, L.max_iterations)
        if fill is not None and not isinstance(fill, str):
            raise AppError("the {} fill must be text: values separated by ';'")
        values = [v.strip() for v in (fill or "").split(";") if v.strip()]
        if len(values) > 16 or any(len(v) > 60 for v in values):
            raise AppError("the {} fill takes at most 16 values of at most 60 characters, separated by ';'")
        stem = safe_name(name if isinstance(name, str) else "", "slider")
        cfg = dict(TRAIN_RECIPE, name=stem, iterations=iterations, ddim_steps=self.steps, preservation=values,
                   prompts=[dict(target=target, positive=positive, unconditional=negative,
                                 action="enhance", guidance=4.0)])
        cfg.update(extra)
        try:
            return self.ce.METHODS.get("slider").config.from_dict(cfg)
        except ValueError as e:
            raise AppError(f"bad slider settings: {_one_line(e)}") from None

    def train(self, name, target, positive, negative, fill, iterations, progress=True) -> str:
        """Train a text slider on a copy of the model; returns the new file's name."""
        cfg = self.slider_config(name, target, positive, negative, fill, iterations)
        return self.train_config(cfg, progress=progress)

    def train_config(self, cfg, progress=True, stem: str | None = None) -> str:
        t0 = time.perf_counter()
        with self.train_lock:
            tm = self._trainer()
            try:
                res = self.ce.train_slider(tm.pipe, cfg, progress=progress)
                out = self.unique_path(stem or f"slider-{cfg.name}")
                res.save(out)
            finally:
                if cfg.name in tm.router.adapters:
                    tm.router.remove(cfg.name)
        print(f"[app] trained slider {cfg.name!r} ({cfg.iterations} steps) in "
              f"{time.perf_counter() - t0:.0f} s -> {out}", flush=True)
        return os.path.basename(out)

    # -- uploads ------------------------------------------------------------------------------
    def upload(self, tmp_path, orig_name: str | None = None) -> str:
        """Check an uploaded file and copy it into the artifacts folder; returns its name."""
        if not tmp_path or not isinstance(tmp_path, str) or not os.path.isfile(tmp_path):
            raise AppError("no file uploaded")
        shown = os.path.basename(orig_name or tmp_path)
        if not shown.lower().endswith(EXT):
            raise AppError(f"{shown}: only {EXT} artifacts written by concept_edit can be uploaded")
        size = os.path.getsize(tmp_path)
        if size > self.limits.max_upload_mb * 2**20:
            raise AppError(f"{shown} is {size / 2**20:.0f} MB; uploads are limited to "
                           f"{self.limits.max_upload_mb:g} MB")
        check_safetensors_header(tmp_path, shown)
        try:
            meta = self.ce.read_artifact_meta(tmp_path)
        except Exception as e:
            raise AppError(_one_line(e).replace(tmp_path, shown)) from None
        if meta.get("kind") not in ("lora", "weights"):
            raise AppError(f"{shown}: unknown artifact kind {meta.get('kind')!r}")
        base = meta.get("base") if isinstance(meta.get("base"), dict) else {}
        if base.get("family") != self.family:
            raise AppError(f"{shown} was made for a {base.get('family')} model ({base.get('model')}); "
                           f"this app runs a {self.family} model ({self.model.source})")
        with self.lock:   # try it on the model: fingerprint, shapes, finite values; then undo
            self._unload_all()
            try:
                self.ce.apply_artifact(self.pipe, tmp_path, scale=0.0, start=0.0, name="app-check").remove()
            except Exception as e:
                raise AppError(_one_line(e).replace(tmp_path, shown)) from None
        stem = safe_name(shown[: -len(EXT)])
        same = os.path.join(self.root, stem + EXT)
        if os.path.isfile(same) and os.path.getsize(same) == size and _same_bytes(same, tmp_path):
            return os.path.basename(same)
        dest = self.unique_path(stem)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=EXT, dir=self.root)
        os.close(fd)
        try:
            shutil.copyfile(tmp_path, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return os.path.basename(dest)


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True
