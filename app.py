#!/usr/bin/env python
"""The concept_edit demo in the browser (Gradio): sliders, erasure A/B, training a slider, a
SliderSpace browser, base vs distilled vs hybrid sampling, and erasure audits.

    python app.py                                   # embedded toy world on http://127.0.0.1:7860
    python app.py --model DIR --device cuda --artifacts my-edits/
    python app.py --distilled weights/toy-turbo     # the Distillation tab's student (this is the default)
    make app                                        # installs the `app` extra, then the line above

Every edit the app can pick is a concept_edit ``.safetensors`` file inside ``--artifacts``
(default ``out/app-artifacts/``); a SliderSpace is a folder there (or one level below) written by
``concept-edit sliderspace discover``. On the first start with an empty folder on the toy world the
app makes two examples (a UCE edit erasing "circle", seconds; a size slider: copied from ``out/``
when one was trained there, else trained for ``--example-iterations`` steps, about 1-2 minutes
on two CPU cores, with a progress bar in the console).

Safe by default: listens on 127.0.0.1 unless ``--host`` says otherwise, no share link unless
``--share``; only files inside the artifacts folder can be picked (real paths are compared, so
``..`` and symlinks out are refused); uploads must be concept_edit safetensors (header and
metadata checked, size-limited, tried on the model, never unpickled); steps, size, guidance, the
number of images, scales and iterations are bounded here on the server with a one-line message;
one shared model serves every request behind a queue (``--queue-size``), and a lock covers
everything that changes its adapters or weights, so concurrent requests get exactly the images
they would get one at a time.

The app uses only public names of ``concept_edit``: its top-level names, and for the newer tabs
``concept_edit.methods.distill.hybrid_sample``, ``concept_edit.eval.diversity.diversity_report`` and
``concept_edit.eval.audit`` (``audit``, ``load_concept``, ``resolve_probes``, ``write_report``). The
SliderSpace, Distillation and Audit parts of the engine live in ``app_tabs.py``.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
import time
import traceback

REPO = os.path.dirname(os.path.abspath(__file__))
from app_tabs import (AUDIT_COLS, DIVERSITY_COLS, AppError, TabsMixin, check_float, check_int,  # noqa: E402
                      check_text, one_line as _one_line)

DEFAULT_DISTILLED = os.path.join(REPO, "weights", "toy-turbo")
DEFAULT_ARTIFACTS = os.path.join(REPO, "out", "app-artifacts")
MAX_SEED = 2**31 - 1
EXT = ".safetensors"
API_NAMES = ("slide", "strip", "erase", "train", "upload", "artifacts", "space_gallery", "space_strip",
             "space_compose", "distill", "audit")
N_SLOTS = 4
DEFAULT_PROMPT = "a red circle"
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}

# Settings of sliders trained from the form (the toy-size recipe; the form sets the prompts).
TRAIN_RECIPE = dict(sites="noxattn", rank=4, alpha=1.0, lr=2e-3, optimizer="adamw", batch_size=4,
                    sampler="bank", bank_size=4, bank_refresh=200, sample_guidance=3.0, start=0.24,
                    train_after_start=True, seed=0)
TOY_SOURCE = "concept_edit:toy-world"
UCE_EXAMPLE = dict(mode="erase", edit=["circle"], guide=[""], guide_eta=1.0,
                   preserve=["square", "triangle", "star"], token_policy="last+eos", sites="text_kv",
                   lamb=0.5, templates=["{}", "a {}", "a large {}", "a small {}", "a red {}", "a green {}",
                                        "a blue {}", "a yellow {}", "a {} on a plain background",
                                        "a {} on a striped background", "a {} on a dotted background"])
SLIDER_EXAMPLE = dict(name="size", prompts=[dict(target="a {}", positive="a large {}",
                                                 unconditional="a small {}", action="enhance", guidance=4.0)],
                      preservation=["circle", "square", "triangle", "star", "red circle", "blue square",
                                    "green triangle", "yellow star"], bank_size=8)


@dataclasses.dataclass
class Limits:
    """Server-side bounds of every request (the page's widgets show the same ranges)."""

    max_steps: int = 100
    max_n: int = 8
    max_iterations: int = 1000
    scale_bound: float = 6.0          # a slider's scale range when its file names none
    max_scale: float = 20.0           # no file's own bounds may go past this
    max_guidance: float = 30.0
    max_prompt: int = 300             # characters
    max_upload_mb: float = 256.0
    queue_size: int = 16              # waiting requests; one more is refused ("queue is full")
    max_loaded: int = 8               # slider adapters kept loaded on the model
    base_cache: int = 64              # base images kept (a slider move re-renders the slider only)
    max_size: int | None = None       # image side in px (default: twice the model's native size)
    max_space: int = 64               # directions of a SliderSpace shown
    max_strip_seeds: int = 4          # rows of a SliderSpace strip
    max_distill_n: int = 32           # images per set in the Distillation tab
    max_audit_s: float = 1800.0       # an audit past this many seconds of sampling stops with a message


# -- small checks (the others are shared with app_tabs.py) ---------------------------------------
def check_safetensors_header(path: str, shown: str) -> dict:
    """Parse a safetensors header by hand (never unpickles, never loads tensors); returns it."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if head[:2] == b"PK" or head[:1] == b"\x80":
            raise AppError(f"{shown} is a pickled checkpoint; the app never unpickles: convert it "
                           "with safetensors.torch.save_file (or use a file written by concept-edit)")
        if len(head) < 8:
            raise AppError(f"{shown} is not a safetensors file (too short)")
        n = struct.unpack("<Q", head)[0]
        if n < 2 or n > min(size - 8, 100_000_000):
            raise AppError(f"{shown} is not a safetensors file (no valid header)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AppError(f"{shown} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise AppError(f"{shown} is not a safetensors file (its header is not a JSON object)")
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


# -- the model side (no gradio here) -------------------------------------------------------------
class Engine(TabsMixin):
    """One shared model, the artifacts folder, and every action of the page.

    Each public method checks its inputs first (``AppError`` with one line), then takes ``lock``
    for anything that generates or changes adapters/weights. Loaded sliders stay loaded (at
    scale 0 when not asked for) and are kept in the order of their paths, so that a request's
    image does not depend on which requests came before it.
    """

    def __init__(self, model, artifacts: str, limits: Limits | None = None,
                 load_args: dict | None = None, distilled=None):
        import concept_edit as ce

        self.ce = ce
        self.model = model
        self.pipe = model.pipe
        self.limits = limits or Limits()
        os.makedirs(artifacts, exist_ok=True)
        self.root = os.path.realpath(artifacts)
        self.load_args = dict(load_args or {})
        self.lock = threading.RLock()
        self.train_lock = threading.Lock()
        self._loaded: dict[str, tuple[object, tuple]] = {}   # path -> (handle, stamp)
        self._meta: dict[str, tuple[tuple, dict]] = {}
        self._base: collections.OrderedDict = collections.OrderedDict()
        self._scorers = None
        self._train_model = None
        self._count = 0
        self.first_request: dict | None = None   # set by build_app; rendered once at start
        self.toy = model.source == TOY_SOURCE
        d = model.defaults
        self.steps, self.guidance, self.size = int(d["steps"]), float(d["guidance"]), int(d["size"])
        bb = model.backbone
        self.family = bb.name
        self.size_multiple = int(bb.size_multiple(self.pipe))
        self.min_size = int(bb.small_size(self.pipe))
        self.max_size = int(self.limits.max_size or max(2 * self.size, self.min_size))
        self.init_tabs(distilled)   # SliderSpace, Distillation, Audit (app_tabs.py)

    # -- files ------------------------------------------------------------------------------
    def resolve(self, name) -> str:
        """A picked file name -> its real path, refusing anything outside the artifacts folder."""
        if name is None or (isinstance(name, str) and not name.strip()):
            raise AppError("no file picked: choose one from the list")
        if not isinstance(name, str) or "\x00" in name or len(name) > 1024:
            raise AppError(f"bad file name {str(name)[:80]!r}")
        path = os.path.realpath(os.path.join(self.root, name))
        if path == self.root or os.path.commonpath([self.root, path]) != self.root:
            raise AppError(f"{name!r} is outside the artifacts folder; only files inside it can be "
                           "chosen (see the Artifacts tab)")
        if any(part.startswith(".") for part in os.path.relpath(path, self.root).split(os.sep)):
            raise AppError(f"{name!r} is a hidden file (temporary files and the upload cache live "
                           "there); only the listed artifacts can be chosen")
        if not path.endswith(EXT):
            raise AppError(f"{name!r} is not a {EXT} file; only concept_edit artifacts can be chosen")
        if not os.path.isfile(path):
            raise AppError(f"{name!r}: no such file in the artifacts folder (refresh the list)")
        return path

    def _shown(self, path: str) -> str:
        return os.path.relpath(path, self.root) if path.startswith(self.root + os.sep) else os.path.basename(path)

    def _clean(self, e: BaseException, path: str) -> str:
        return _one_line(e).replace(path, self._shown(path))

    @staticmethod
    def _stamp(path: str) -> tuple:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def meta(self, path: str) -> dict:
        stamp = self._stamp(path)
        hit = self._meta.get(path)
        if hit and hit[0] == stamp:
            return hit[1]
        try:
            check_safetensors_header(path, self._shown(path))
            meta = self.ce.read_artifact_meta(path)
        except AppError:
            raise
        except Exception as e:
            raise AppError(self._clean(e, path)) from None
        self._meta[path] = (stamp, meta)
        return meta

    def listing(self) -> list[dict]:
        rows = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.name.endswith(EXT):
                continue
            row = {"file": entry.name, "kind": "?", "method": "?", "model": "?", "note": "", "usable": False}
            try:
                m = self.meta(self.resolve(entry.name))
            except AppError as e:
                row["note"] = str(e)
                rows.append(row)
                continue
            base = m.get("base") if isinstance(m.get("base"), dict) else {}
            row.update(kind=str(m.get("kind")), method=str(m.get("method")), model=str(base.get("model")))
            row["usable"] = base.get("family") == self.family
            if not row["usable"]:
                row["note"] = f"made for a {base.get('family')} model; this app runs a {self.family} model"
            elif m.get("kind") == "lora" and m.get("method") == "slider":
                lo, hi = self.bounds(m)
                row["note"] = f"slider, scales {lo:g}..{hi:g}"
            rows.append(row)
        return rows

    @staticmethod
    def _is_slider(row) -> bool:
        return row["usable"] and row["kind"] == "lora" and row["method"] == "slider"

    @staticmethod
    def _is_edit(row) -> bool:
        return row["usable"] and (row["kind"] == "weights" or (row["kind"] == "lora" and row["method"] != "slider"))

    def slider_choices(self, rows=None) -> list[tuple[str, str]]:
        return [(r["file"], r["file"]) for r in (self.listing() if rows is None else rows) if self._is_slider(r)]

    def edit_choices(self, rows=None) -> list[tuple[str, str]]:
        return [(f"{r['file']} ({r['method']})", r["file"])
                for r in (self.listing() if rows is None else rows) if self._is_edit(r)]

    def bounds(self, meta: dict) -> tuple[float, float]:
        """The scale range of a slider: the file's ``lora.scale_bounds`` if it names one, else
        -bound..bound (6, as in the reference demo)."""
        lora = meta.get("lora") if isinstance(meta.get("lora"), dict) else {}
        b = lora.get("scale_bounds", lora.get("bounds"))
        cap = self.limits.max_scale
        try:
            lo, hi = max(float(b[0]), -cap), min(float(b[1]), cap)
            if math.isfinite(lo) and math.isfinite(hi) and lo < hi:
                return lo, hi
        except (TypeError, ValueError, IndexError, KeyError):
            pass
        return -self.limits.scale_bound, self.limits.scale_bound

    def sweep(self, meta: dict, points: int = 5) -> list[float]:
        lo, hi = self.bounds(meta)
        rec = (meta.get("lora") or {}).get("recommended_scales") if isinstance(meta.get("lora"), dict) else None
        try:
            a, b = max(lo, float(rec[0])), min(hi, float(rec[1]))
            if a < b:
                lo, hi = a, b
        except (TypeError, ValueError, IndexError):
            pass
        return [round(lo + (hi - lo) * i / (points - 1), 3) for i in range(points)]

    def slider_defaults(self, name: str | None) -> dict:
        """What picking a slider sets in the page: its bounds, a scale to show, its start."""
        lo, hi = -self.limits.scale_bound, self.limits.scale_bound
        if not name:
            return {"min": lo, "max": hi, "scale": 0.0, "start": 0.0}
        m = self.meta(self.resolve(name))
        lo, hi = self.bounds(m)
        lora = m.get("lora") if isinstance(m.get("lora"), dict) else {}
        try:
            start = min(max(float(lora.get("start", 0.0)), 0.0), 1.0)
        except (TypeError, ValueError):
            start = 0.0
        return {"min": lo, "max": hi, "scale": self.sweep(m)[-1], "start": start}

    # -- request checks ---------------------------------------------------------------------
    def check_sampling(self, prompt, seed, steps, guidance, size) -> dict:
        L = self.limits
        prompt = check_text(prompt, "prompt", L.max_prompt, "a red circle")
        seed = check_int(seed, "seed", 0, MAX_SEED)
        steps = check_int(steps, "steps", 1, L.max_steps)
        guidance = check_float(guidance, "guidance", 0.0, L.max_guidance)
        size = check_int(size, "size", self.min_size, self.max_size)
        if size % self.size_multiple:
            raise AppError(f"size must be a multiple of {self.size_multiple} for this model, got {size}")
        return dict(prompt=prompt, seed=seed, steps=steps, guidance=guidance, height=size, width=size)

    def check_sliders(self, pairs) -> list[tuple[str, float, dict]]:
        out, seen = [], set()
        for i, (name, scale) in enumerate(pairs, 1):
            if name is None or (isinstance(name, str) and not name.strip()):
                continue
            path = self.resolve(name)
            m = self.meta(path)
            if m.get("kind") != "lora":
                raise AppError(f"slider {i}: {name} is a {m.get('method')} weights edit, not a slider; "
                               "pick it in the Erasure A/B tab")
            lo, hi = self.bounds(m)
            s = check_float(scale, f"scale {i} ({name})", lo, hi)
            if path in seen:
                raise AppError(f"{name} is picked twice; pick each slider once")
            seen.add(path)
            out.append((path, s, m))
        return out

    # -- generation (call with the lock held) -------------------------------------------------
    def _generate(self, s: dict, n: int = 1):
        return self.ce.generate(self.pipe, self.ce.SampleSettings(n=n, **s), progress=False)

    def _cached(self, key, make):
        if key in self._base:
            self._base.move_to_end(key)
            return self._base[key]
        value = self._base[key] = make()
        while len(self._base) > self.limits.base_cache:
            self._base.popitem(last=False)
        return value

    def _base_images(self, s: dict, n: int):
        """``n`` base images (seeds seed..seed+n-1), every adapter off."""
        def make():
            with self.model.router.disabled():
                return self._generate(s, n)
        return self._cached(("images", n, *s.values()), make)

    def _base_run(self, s: dict):
        """One base image with its trajectory (the state before each step) and timesteps: a
        slider that starts at step k resumes from the state there instead of re-running the
        first k steps (the same images, k/steps less work per slider move)."""
        def make():
            with self.model.router.disabled():
                res = self.ce.sample(self.pipe, [s["prompt"]], seed=s["seed"], steps=s["steps"],
                                     guidance=s["guidance"], height=s["height"], width=s["width"],
                                     return_states=True)
            return _uint8(res.images)[0], res.states, [float(t) for t in res.timesteps]
        return self._cached(("run", *s.values()), make)

    def _unload(self, path: str) -> None:
        handle, _ = self._loaded.pop(path)
        handle.remove()

    def _unload_all(self) -> None:
        for p in list(self._loaded):
            self._unload(p)

    def _load(self, path: str) -> None:
        self._count += 1
        try:
            h = self.ce.apply_artifact(self.pipe, path, scale=0.0, start=0.0, name=f"app-slider-{self._count}")
        except Exception as e:
            raise AppError(self._clean(e, path)) from None
        self._loaded[path] = (h, self._stamp(path))

    def _ensure(self, paths: list[str]) -> None:
        """Load these sliders; loaded adapters stay sorted by path (a fixed summation order when
        several are folded into one layer, whatever the history of requests)."""
        for p in list(self._loaded):
            if not os.path.exists(p) or self._stamp(p) != self._loaded[p][1]:
                self._unload(p)
        need = sorted(p for p in set(paths) if p not in self._loaded)
        if not need:
            return
        if len(self._loaded) + len(need) > self.limits.max_loaded:
            for p in [q for q in self._loaded if q not in paths]:
                self._unload(p)
        later = [p for p in self._loaded if p > need[0]]
        for p in later:
            self._unload(p)
        for p in sorted(set(need) | set(later)):
            self._load(p)

    def _slider_image(self, s: dict, active: list[tuple[str, float]], k: int):
        """The image with these sliders at these scales, acting from step ``k`` on."""
        base, states, _ = self._base_run(s)
        active = [(p, sc) for p, sc in active if sc != 0.0]
        if not active or k >= s["steps"]:
            return base
        self._ensure([p for p, _ in active])
        router, want = self.model.router, dict(active)
        for p, (h, _) in self._loaded.items():
            router.set_scale(h.name, want.get(p, 0.0))
            router.set_schedule(h.name, None)
        res = self.ce.sample(self.pipe, [s["prompt"]], seed=s["seed"], steps=s["steps"], guidance=s["guidance"],
                             height=s["height"], width=s["width"], start_latents=states[k], start_step=k)
        return _uint8(res.images)[0]

    def start_text(self, s: dict, k: int) -> str:
        """The start step and its timestep (the base run knows the schedule of these settings)."""
        timesteps = self._base_run(s)[2]
        if k >= len(timesteps):
            return f"start step {k} of {s['steps']}: past the last step, so the sliders never act"
        return f"start step {k} of {s['steps']} = timestep {timesteps[k]:.0f}: the sliders act from there on"

    # -- actions ------------------------------------------------------------------------------
    def slide(self, prompt, seed, steps, start_step, guidance, size, pairs):
        """(base image, slider image, info) for one prompt and seed."""
        s = self.check_sampling(prompt, seed, steps, guidance, size)
        k = check_int(start_step, "start step", 0, s["steps"])
        req = self.check_sliders(pairs)
        t0 = time.perf_counter()
        with self.lock:
            base = self._base_run(s)[0]
            img = self._slider_image(s, [(p, sc) for p, sc, _ in req], k)
            when = self.start_text(s, k)
        dt = time.perf_counter() - t0
        used = ", ".join(f"{self._shown(p)} @ {sc:g}" for p, sc, _ in req) or "no slider picked"
        info = f"{used}; {when}. {dt:.2f} s"
        return base, img, info

    def strip(self, prompt, seed, steps, start_step, guidance, size, pairs):
        """One labelled row: the first picked slider over its scale range, the others as set."""
        s = self.check_sampling(prompt, seed, steps, guidance, size)
        k = check_int(start_step, "start step", 0, s["steps"])
        req = self.check_sliders(pairs)
        if not req:
            raise AppError("pick a slider first: the strip sweeps the first picked slider")
        (p0, _, m0), rest = req[0], [(p, sc) for p, sc, _ in req[1:]]
        scales = self.sweep(m0)
        with self.lock:
            tiles = [self._slider_image(s, [(p0, sc)] + rest, k) for sc in scales]
        name = self._shown(p0)
        cols = [f"{name} @ {sc:g}" if i == 0 else f"{sc:g}" for i, sc in enumerate(scales)]
        return self.ce.labelled_grid([tiles], cols=cols, tile=128 if s["height"] <= 128 else 256,
                                     title=f"{s['prompt']!r}, seed {s['seed']}: the first slider over its scales")

    def labels(self, images) -> list[dict] | None:
        """Toy classifier labels per image (the toy world only)."""
        if not self.toy:
            return None
        if self._scorers is None:
            axes = {"shape": "circle", "colour": "red", "size": "small", "background": "plain"}
            self._scorers = {a: self.ce.get_scorer("toy", [v]) for a, v in axes.items()}
        cols = {a: sc(images) for a, sc in self._scorers.items()}
        return [{a: cols[a][i] for a in cols} for i in range(len(images))]

    @staticmethod
    def concepts(meta: dict) -> list[str]:
        cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        out = []
        for c in list(cfg.get("edit") or []) + list(cfg.get("concepts") or []):
            c = c.get("concept") if isinstance(c, dict) else c
            if isinstance(c, str) and c.strip():
                out.append(c.strip())
        return out

    def erase(self, name, prompt, seed, n, steps, guidance, size):
        """Base and edited images for the same seeds, with labels and a summary."""
        path = self.resolve(name)
        m = self.meta(path)
        if m.get("kind") == "lora" and m.get("method") == "slider":
            raise AppError(f"{name} is a slider; pick it in the Sliders tab")
        s = self.check_sampling(prompt, seed, steps, guidance, size)
        n = check_int(n, "number of images", 1, self.limits.max_n)
        t0 = time.perf_counter()
        with self.lock:
            base = self._base_images(s, n)
            self._unload_all()   # a weights edit may touch layers a slider wraps
            try:
                h = self.ce.apply_artifact(self.pipe, path, scale=1.0, name="app-edit")
            except Exception as e:
                raise AppError(self._clean(e, path)) from None
            try:
                edited = self._generate(s, n)
            finally:
                h.remove()
        dt = time.perf_counter() - t0
        lb, le = self.labels(base), self.labels(edited)
        lines = [f"**{self._shown(path)}** ({m.get('method')}, {m.get('kind')}): {n} seed(s) from "
                 f"{s['seed']}, {s['steps']} steps, {dt:.1f} s."]
        if lb is None:
            lines.append("(classifier labels are shown on the toy world only)")
        else:
            for c in self.concepts(m) or []:
                words = c.split()
                nb = sum(all(w in d.values() for w in words) for d in lb)
                ne = sum(all(w in d.values() for w in words) for d in le)
                lines.append(f"'{c}' seen by the toy classifier: base {nb}/{n} -> edited {ne}/{n}")
        return base, edited, lb, le, "\n\n".join(lines)

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


def _uint8(images):
    """[0, 1] floats -> uint8, as ``concept_edit.generate`` rounds them."""
    import numpy as np

    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


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


# -- the page -------------------------------------------------------------------------------------
CSS = """
.pixel img, .pixel canvas { image-rendering: pixelated; }
.pixel img { width: 100%; height: 100%; object-fit: contain; }
.compact-gallery .fixed-height { min-height: 0 !important; }
"""


def theme():
    import gradio as gr

    # system fonts: the default theme would fetch Google fonts, which an offline machine lacks
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def build_app(engine: Engine, queue_size: int | None = None):
    """The gr.Blocks of the app (queue configured); launch it with :func:`serve`."""
    import gradio as gr

    L = engine.limits
    queue_size = L.queue_size if queue_size is None else queue_size

    def ui(fn):
        @functools.wraps(fn)
        def inner(*a, **k):
            try:
                return fn(*a, **k)
            except AppError as e:
                raise gr.Error(str(e), print_exception=False) from None
            except gr.Error:
                raise
            except Exception as e:  # the app keeps serving; the console has the traceback
                traceback.print_exc()
                raise gr.Error(f"internal error ({type(e).__name__}: {_one_line(e)}); the app keeps "
                               "serving", print_exception=False) from None
        return inner

    rows = engine.listing()
    sliders, edits = engine.slider_choices(rows), engine.edit_choices(rows)
    first = sliders[0][1] if sliders else ""
    d0 = engine.slider_defaults(first) if first else engine.slider_defaults(None)
    scale0, k0 = (d0["scale"] if first else 0.0), round(d0["start"] * engine.steps)
    engine.first_request = dict(prompt=DEFAULT_PROMPT, seed=0, steps=engine.steps, start_step=k0,
                                guidance=engine.guidance, size=engine.size, pairs=[(first, scale0)])
    model_line = (f"Model: **{engine.model.source}** ({engine.family}), {engine.size} px, "
                  f"{engine.steps} steps by default. Artifacts folder: `{engine.root}`.")

    spaces = engine.space_choices()
    space0 = spaces[0][1] if spaces else None
    try:
        sp0 = engine.space(space0) if space0 else None
    except AppError:
        sp0 = None
    ss_prompt0 = (sp0 or {}).get("prompt") or "a circle"
    directions0 = [(sl["label"], sl["name"]) for sl in (sp0 or {}).get("sliders", [])]
    concepts, probes = engine.audit_concepts(), engine.audit_probes()
    concept0 = engine.concept_for(edits[0][1]) if edits else (concepts[0] if concepts else None)

    def table(rows_=None):
        rows_ = engine.listing() if rows_ is None else rows_
        return [[r["file"], r["kind"], r["method"], r["model"], r["note"]] for r in rows_]

    with gr.Blocks(title="concept_edit", delete_cache=(3600, 7200)) as demo:
        gr.Markdown("## concept_edit: sliders, erasure, training, SliderSpace, distillation, audits\n" + model_line)
        with gr.Tabs():
            # -- Sliders ------------------------------------------------------------------
            with gr.Tab("Sliders", id="sliders"):
                with gr.Row():
                    prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", scale=4, max_lines=1)
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, scale=1)
                    go = gr.Button("Generate", variant="primary", scale=1)
                slots = []
                with gr.Row():
                    for i in range(N_SLOTS):
                        with gr.Column(min_width=180):
                            f = gr.Dropdown([("(none)", "")] + sliders, value=first if i == 0 else "",
                                            label=f"Slider {i + 1}", allow_custom_value=True,
                                            elem_id=f"slider-file-{i + 1}")
                            s = gr.Slider(-L.max_scale, L.max_scale,
                                          value=scale0 if i == 0 else 0.0, step=0.1,
                                          label=f"Scale {i + 1}", elem_id=f"slider-scale-{i + 1}")
                            slots.append((f, s))
                start = gr.Slider(0, L.max_steps, value=k0, step=1, label="Start step (the sliders act "
                                  "from this denoising step on; earlier steps fix the layout)",
                                  elem_id="start-step")
                with gr.Row():
                    base_img = gr.Image(label="Base (same seed)", type="numpy", format="png",
                                        interactive=False, height=320, elem_classes=["pixel"],
                                        elem_id="base-image")
                    out_img = gr.Image(label="With sliders", type="numpy", format="png",
                                       interactive=False, height=320, elem_classes=["pixel"],
                                       elem_id="slider-image")
                info = gr.Markdown(elem_id="slide-info")
                with gr.Accordion("Sampling", open=False):
                    with gr.Row():
                        steps = gr.Slider(1, L.max_steps, value=engine.steps, step=1, label="Steps")
                        guidance = gr.Slider(0, L.max_guidance, value=engine.guidance, step=0.5,
                                             label="Guidance")
                        size = gr.Slider(engine.min_size, engine.max_size, value=engine.size,
                                         step=engine.size_multiple, label="Size (px)")
                sweep = gr.Button("Strip over scales (first slider)")
                strip_img = gr.Image(label="Strip: the first slider over its scales", show_label=False,
                                     type="numpy", format="png", interactive=False, elem_id="strip-image")

            # -- Erasure A/B --------------------------------------------------------------
            with gr.Tab("Erasure A/B", id="erasure"):
                with gr.Row():
                    edit = gr.Dropdown(edits, value=edits[0][1] if edits else None, allow_custom_value=True,
                                       label="Edit (a UCE or ESD artifact)", scale=3, elem_id="edit-file")
                    e_prompt = gr.Textbox("a circle", label="Prompt", scale=3, max_lines=1)
                    e_seed = gr.Number(0, label="First seed", precision=0, minimum=0, maximum=MAX_SEED)
                with gr.Row():
                    e_n = gr.Slider(1, L.max_n, value=4, step=1, label="Images")
                    e_steps = gr.Slider(1, L.max_steps, value=engine.steps, step=1, label="Steps")
                    run = gr.Button("Compare", variant="primary")
                with gr.Row():
                    base_gal = gr.Gallery(label="Base", columns=2, format="png", height="auto",
                                          object_fit="contain", elem_classes=["pixel"], elem_id="base-gallery")
                    edit_gal = gr.Gallery(label="Edited", columns=2, format="png", height="auto",
                                          object_fit="contain", elem_classes=["pixel"], elem_id="edit-gallery")
                e_info = gr.Markdown()

            # -- Train a slider -----------------------------------------------------------
            with gr.Tab("Train a slider", id="train"):
                gr.Markdown("A text slider: the LoRA learns to move **target** toward **positive** and "
                            "away from **negative**. `{}` in a prompt is filled with each value of "
                            "the fill list. The file appears in the Sliders tab when done.")
                with gr.Row():
                    t_name = gr.Textbox("my-size", label="Name", max_lines=1)
                    t_target = gr.Textbox("a {}", label="Target", max_lines=1)
                    t_pos = gr.Textbox("a large {}", label="Positive", max_lines=1)
                    t_neg = gr.Textbox("a small {}", label="Negative", max_lines=1)
                with gr.Row():
                    t_fill = gr.Textbox("circle; square; triangle; star", label="Fill {} with (';'-separated)",
                                        max_lines=1, scale=3)
                    t_it = gr.Slider(1, L.max_iterations, value=100, step=1, label="Iterations", scale=2,
                                     elem_id="train-iterations")
                t_go = gr.Button("Train", variant="primary")
                t_status = gr.Markdown("Progress shows here while a slider trains.", min_height=90,
                                       container=True, padding=True, elem_id="train-status")

            # -- Artifacts ----------------------------------------------------------------
            with gr.Tab("Artifacts", id="artifacts"):
                gr.Markdown(f"Files in `{engine.root}` (only these can be picked). Upload a "
                            f"concept_edit `{EXT}` file (at most {L.max_upload_mb:g} MB; checked, tried on "
                            "the model, never unpickled).")
                files = gr.Dataframe(table(rows), headers=["file", "kind", "method", "base model", "note"],
                                     interactive=False, wrap=True)
                with gr.Row():
                    refresh = gr.Button("Refresh")
                    up = gr.File(label=f"Upload an artifact ({EXT})", file_types=[EXT], type="filepath")
                up_status = gr.Markdown()

            # -- SliderSpace browser --------------------------------------------------------
            with gr.Tab("SliderSpace", id="sliderspace"):
                gr.Markdown("Directions discovered without labels (`concept-edit sliderspace discover "
                            "--out DIR`, DIR inside the artifacts folder): one image per direction at "
                            "+scale; click one for its strip from -scale to +scale on a few seeds; "
                            "compose several below.", elem_id="space-intro")
                with gr.Row():
                    space = gr.Dropdown(spaces, value=space0, allow_custom_value=True, scale=3,
                                        label="Space (a SliderSpace folder)", elem_id="space-dir")
                    ss_prompt = gr.Textbox(ss_prompt0, label="Prompt", scale=3, max_lines=1)
                    ss_seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
                    ss_scale = gr.Slider(0.5, L.scale_bound, value=2.0, step=0.5, label="Scale")
                    ss_go = gr.Button("Show directions", variant="primary")
                ss_gallery = gr.Gallery(label="Directions at +scale (click one)", columns=8, format="png",
                                        height="auto", object_fit="contain", elem_classes=["pixel", "compact-gallery"],
                                        elem_id="space-gallery")
                ss_info = gr.Markdown()
                with gr.Row():
                    ss_index = gr.Number(0, label="Direction (index)", precision=0, minimum=0, elem_id="space-index")
                    ss_seeds = gr.Slider(1, L.max_strip_seeds, value=3, step=1, label="Seeds (rows)")
                    ss_strip_go = gr.Button("Strip -scale..+scale")
                ss_strip = gr.Image(label="Strip", type="numpy", format="png", interactive=False,
                                    elem_id="space-strip")
                with gr.Accordion("Compose several directions", open=False):
                    ss_slots = []
                    with gr.Row():
                        for i in range(N_SLOTS):
                            with gr.Column(min_width=160):
                                ss_slots.append((
                                    gr.Dropdown([("(none)", "")] + directions0, value="", label=f"Direction {i + 1}",
                                                allow_custom_value=True),
                                    gr.Slider(-L.scale_bound, L.scale_bound, value=0.0, step=0.1,
                                              label=f"Scale {i + 1}")))
                    ss_compose_go = gr.Button("Compose")
                    with gr.Row():
                        ss_base = gr.Image(label="Base", type="numpy", format="png", interactive=False,
                                           height=256, elem_classes=["pixel"])
                        ss_mixed = gr.Image(label="Composed", type="numpy", format="png", interactive=False,
                                            height=256, elem_classes=["pixel"], elem_id="space-composed")
                    ss_compose_info = gr.Markdown()
                with gr.Accordion("The space's sheet (sheet.png: rows = directions)", open=False):
                    ss_sheet = gr.Image(show_label=False, type="numpy", format="png", interactive=False)

            # -- Distillation -------------------------------------------------------------
            with gr.Tab("Distillation", id="distillation"):
                has_student = engine.distilled is not None
                gr.Markdown(engine.distill_note() or (
                    f"Base **{engine.model.source}** vs distilled **{engine.distilled.source}** vs the hybrid "
                    "(the base for the first steps, the distilled model after) for the same seeds, on the "
                    "distilled model's schedule, with the diversity of each set."), elem_id="distill-note")
                with gr.Row(visible=has_student):
                    d_prompt = gr.Textbox("a circle", label="Prompt", scale=3, max_lines=1)
                    d_seed = gr.Number(0, label="First seed", precision=0, minimum=0, maximum=MAX_SEED)
                    d_n = gr.Slider(2, L.max_distill_n, value=8, step=1, label="Images per set")
                    d_steps = gr.Slider(1, L.max_steps, value=engine.distilled_steps, step=1,
                                        label="Distilled steps")
                    d_switch = gr.Slider(0, L.max_steps, value=min(1, engine.distilled_steps), step=1,
                                         label="Switch (base steps of the hybrid)")
                    d_go = gr.Button("Compare", variant="primary")
                with gr.Column(visible=has_student):   # one set a row: a column = one seed
                    d_sets = [gr.Gallery(label=lab, columns=8, format="png", height="auto", object_fit="contain",
                                         elem_classes=["pixel", "compact-gallery"], elem_id=f"distill-{lab.lower()}")
                              for lab in ("Base", "Distilled", "Hybrid")]
                d_table = gr.Dataframe(headers=DIVERSITY_COLS, interactive=False, visible=has_student,
                                       label="Diversity (higher = more diverse)")
                d_info = gr.Markdown()

            # -- Audit --------------------------------------------------------------------
            with gr.Tab("Audit", id="audit"):
                gr.Markdown("The erasure audit at `--budget quick` (`concept-edit audit`): which probes bring "
                            "the erased concept back, base vs edited. All ten probes take a few minutes on "
                            f"the toy world on a CPU; an audit past {L.max_audit_s:g} s stops. It runs on "
                            "copies of the model, so the other tabs keep serving.")
                with gr.Row():
                    a_edit = gr.Dropdown(edits, value=edits[0][1] if edits else None, allow_custom_value=True,
                                         label="Edit (a UCE or ESD artifact)", scale=3, elem_id="audit-edit")
                    a_concept = gr.Dropdown(concepts, value=concept0, label="Concept (configs/audit/*.yaml)")
                    a_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                    a_go = gr.Button("Audit", variant="primary")
                a_probes = gr.CheckboxGroup(probes, value=probes, label="Probes")
                a_summary = gr.Markdown(elem_id="audit-summary")
                a_table = gr.Dataframe(headers=AUDIT_COLS, interactive=False, wrap=True, label="Summary")
                a_files = gr.File(label="Report files", file_count="multiple", interactive=False)
                with gr.Accordion("Report (report.html)", open=False):
                    a_report = gr.HTML()

        # -- events -----------------------------------------------------------------------------
        sl_inputs = [prompt, seed, steps, start, guidance, size] + [c for pair in slots for c in pair]

        def _pairs(rest):
            return [(rest[2 * i], rest[2 * i + 1]) for i in range(N_SLOTS)]

        @ui
        def slide(prompt, seed, steps, start_step, guidance, size, slider_1, scale_1, slider_2, scale_2,
                  slider_3, scale_3, slider_4, scale_4):
            return engine.slide(prompt, seed, steps, start_step, guidance, size,
                                _pairs([slider_1, scale_1, slider_2, scale_2, slider_3, scale_3,
                                        slider_4, scale_4]))

        @ui
        def strip(prompt, seed, steps, start_step, guidance, size, slider_1, scale_1, slider_2, scale_2,
                  slider_3, scale_3, slider_4, scale_4):
            return engine.strip(prompt, seed, steps, start_step, guidance, size,
                                _pairs([slider_1, scale_1, slider_2, scale_2, slider_3, scale_3,
                                        slider_4, scale_4]))

        @ui
        def erase(edit, prompt, seed, n, steps):
            base, edited, lb, le, text = engine.erase(edit, prompt, seed, n, steps, engine.guidance, engine.size)

            def cap(lab, i):
                return None if lab is None else " · ".join(lab[i][a] for a in ("shape", "colour", "size", "background"))

            return ([(base[i], cap(lb, i)) for i in range(len(base))],
                    [(edited[i], cap(le, i)) for i in range(len(edited))], text)

        @ui
        def train(name, target, positive, negative, fill, iterations, progress=gr.Progress(track_tqdm=True)):
            out = engine.train(name, target, positive, negative, fill, iterations, progress=True)
            return f"Trained **{out}**: pick it in the Sliders tab."

        @ui
        def upload(file):
            if isinstance(file, dict):  # a client that sends the FileData itself
                file = file.get("path")
            name = engine.upload(file)
            return f"Added **{name}** to the artifacts folder."

        @ui
        def artifacts():
            return table()

        @ui
        def space_gallery(space, prompt, seed, scale):
            return engine.space_gallery(space, prompt, seed, scale)

        @ui
        def space_strip(space, index, prompt, seed, seeds, scale):
            return engine.space_strip(space, index, prompt, seed, seeds, scale)

        @ui
        def space_compose(space, prompt, seed, direction_1, scale_1, direction_2, scale_2, direction_3, scale_3,
                          direction_4, scale_4):
            return engine.space_compose(space, prompt, seed, [(direction_1, scale_1), (direction_2, scale_2),
                                                              (direction_3, scale_3), (direction_4, scale_4)])

        def space_picked(space_):
            """A space picked in the page: its prompt, its directions in the compose slots."""
            try:
                sp = engine.space(space_)
            except AppError as e:
                raise gr.Error(str(e), print_exception=False) from None
            dirs = [("(none)", "")] + [(sl["label"], sl["name"]) for sl in sp["sliders"]]
            return ([gr.update(value=sp["prompt"]) if sp["prompt"] else gr.skip(),
                     gr.update(value=0, maximum=len(sp["sliders"]) - 1)]
                    + [gr.update(choices=dirs, value="") for _ in ss_slots])

        def direction_clicked(evt):
            return max(int(evt.index) - 1, 0)   # the gallery's first image is the base

        # a real class, not the string this file's annotations are: gradio passes the click's data
        direction_clicked.__annotations__["evt"] = gr.SelectData

        @ui
        def distill(prompt, seed, n, switch, steps):
            sets, rows_, text = engine.distill(prompt, seed, n, switch, steps)

            def gallery(imgs):
                lab = engine.labels(imgs)
                return [(im, None if lab is None else " · ".join(lab[i][a] for a in ("shape", "colour", "size")))
                        for i, im in enumerate(imgs)]

            return (gallery(sets["base"]), gallery(sets["distilled"]), gallery(sets["hybrid"]),
                    [[r[0]] + [("-" if v is None else v) for v in r[1:]] for r in rows_], text)

        @ui
        def audit(edit, concept, probes, seed, progress=gr.Progress(track_tqdm=True)):
            progress(0, desc="loading the audit's model copies")
            out = engine.audit(edit, concept, probes, seed, progress=True)
            rows_ = [[("-" if v is None else v) for v in r] for r in out["rows"]]
            return out["summary"], rows_, out["files"], engine.report_frame(out["html"])

        def lists(steps_, space_, *picked):
            """Fresh choices, the picked files' scale bounds, the start's range, the table."""
            rows_ = engine.listing()
            spaces_ = engine.space_choices()
            names = [v for _, v in spaces_]
            sl, ed = [("(none)", "")] + engine.slider_choices(rows_), engine.edit_choices(rows_)
            bounds = []
            for name in picked:
                try:
                    d = engine.slider_defaults(name)
                except AppError:
                    d = engine.slider_defaults(None)
                bounds.append(gr.update(minimum=d["min"], maximum=d["max"]))
            return ([gr.update(choices=sl) for _ in slots] + bounds
                    + [gr.update(maximum=int(steps_)), gr.update(choices=ed), table(rows_),
                       gr.update(choices=spaces_, value=space_ if space_ in names else (names or [None])[0]),
                       gr.update(choices=ed)])

        # the widgets are built with the server's widest bounds (API callers may send any file,
        # any steps); each page narrows them to its own picks on load
        list_inputs = [steps, space] + [f for f, _ in slots]
        list_outputs = [f for f, _ in slots] + [s for _, s in slots] + [start, edit, files, space, a_edit]
        model_lane = dict(concurrency_id="model", concurrency_limit=1)

        gr.on([go.click, prompt.submit, seed.submit, start.release, guidance.release, size.release]
              + [s.release for _, s in slots],
              slide, sl_inputs, [base_img, out_img, info], api_name="slide", trigger_mode="always_last",
              **model_lane)
        sweep.click(strip, sl_inputs, [strip_img], api_name="strip", **model_lane)
        go.click(strip, sl_inputs, [strip_img], api_name="strip_on_generate", api_visibility="private",
                 **model_lane)

        def picker(i):
            def pick(name, steps_):
                try:
                    d = engine.slider_defaults(name)
                except AppError as e:
                    raise gr.Error(str(e), print_exception=False) from None
                start_ = gr.update(value=round(d["start"] * int(steps_))) if (i == 0 and name) else gr.update()
                return gr.update(minimum=d["min"], maximum=d["max"], value=d["scale"]), start_
            return pick

        for i, (f, s) in enumerate(slots):
            f.input(picker(i), [f, steps], [s, start], api_visibility="private",
                    queue=False).success(slide, sl_inputs, [base_img, out_img, info],
                                         api_visibility="private", **model_lane)

        def steps_changed(steps_, k):
            return gr.update(maximum=int(steps_), value=min(int(k), int(steps_)))

        steps.release(steps_changed, [steps, start], [start], api_visibility="private",
                      queue=False).success(slide, sl_inputs, [base_img, out_img, info],
                                           api_visibility="private", **model_lane)

        ss_inputs = [space, ss_prompt, ss_seed]
        ss_go.click(space_gallery, ss_inputs + [ss_scale], [ss_gallery, ss_sheet, ss_info],
                    api_name="space_gallery", **model_lane)
        ss_strip_go.click(space_strip, [space, ss_index] + ss_inputs[1:] + [ss_seeds, ss_scale], [ss_strip],
                          api_name="space_strip", **model_lane)
        ss_gallery.select(direction_clicked, None, [ss_index], api_visibility="private", queue=False).success(
            space_strip, [space, ss_index] + ss_inputs[1:] + [ss_seeds, ss_scale], [ss_strip],
            api_visibility="private", **model_lane)
        ss_compose_go.click(space_compose, ss_inputs + [c for pair in ss_slots for c in pair],
                            [ss_base, ss_mixed, ss_compose_info], api_name="space_compose", **model_lane)
        space.input(space_picked, [space], [ss_prompt, ss_index] + [f for f, _ in ss_slots],
                    api_visibility="private", queue=False).success(
            space_gallery, ss_inputs + [ss_scale], [ss_gallery, ss_sheet, ss_info], api_visibility="private",
            **model_lane)
        def switch_range(steps_, switch_):   # the page narrows the switch to its steps (API: any)
            return gr.update(maximum=int(steps_), value=min(int(switch_), int(steps_)))

        d_steps.release(switch_range, [d_steps, d_switch], [d_switch], api_visibility="private", queue=False)
        demo.load(switch_range, [d_steps, d_switch], [d_switch], api_visibility="private", queue=False)
        d_go.click(distill, [d_prompt, d_seed, d_n, d_switch, d_steps], d_sets + [d_table, d_info],
                   api_name="distill", **model_lane)
        a_edit.input(lambda e: gr.update(value=engine.concept_for(e)), [a_edit], [a_concept],
                     api_visibility="private", queue=False)
        # the audit runs on the background copies (the trainer's lane): the page keeps serving
        a_go.click(audit, [a_edit, a_concept, a_probes, a_seed], [a_summary, a_table, a_files, a_report],
                   api_name="audit", concurrency_id="train", concurrency_limit=1)
        run.click(erase, [edit, e_prompt, e_seed, e_n, e_steps], [base_gal, edit_gal, e_info],
                  api_name="erase", **model_lane)
        t_go.click(train, [t_name, t_target, t_pos, t_neg, t_fill, t_it], [t_status], api_name="train",
                   concurrency_id="train", concurrency_limit=1).success(
            lists, list_inputs, list_outputs, api_visibility="private", queue=False)
        up.upload(upload, [up], [up_status], api_name="upload", **model_lane).success(
            lists, list_inputs, list_outputs, api_visibility="private", queue=False)
        refresh.click(artifacts, None, [files], api_name="artifacts", queue=False).success(
            lists, list_inputs, list_outputs, api_visibility="private", queue=False)
        demo.load(lists, list_inputs, list_outputs, api_visibility="private", queue=False).then(
            slide, sl_inputs, [base_img, out_img, info], api_visibility="private", **model_lane)

    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    return demo


def serve(demo, engine: Engine, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
          block: bool = True, quiet: bool = False):
    """Launch with the safe defaults (no share link, no MCP server, no SSR node process)."""
    return demo.launch(server_name=host, server_port=port, share=bool(share), prevent_thread_lock=not block,
                       max_file_size=int(engine.limits.max_upload_mb * 2**20), ssr_mode=False,
                       mcp_server=False, pwa=False, show_error=False, quiet=quiet, theme=theme(), css=CSS,
                       footer_links=["api"])


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python app.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="hub id, diffusers directory or single-file checkpoint "
                                   "(default: the embedded toy world)")
    p.add_argument("--artifacts", default=DEFAULT_ARTIFACTS,
                   help="folder of .safetensors edits; the only files the app can pick")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network)")
    p.add_argument("--port", type=int, default=7860, help="port")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default="fp32", help="fp32 | fp16 | bf16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (or CONCEPT_EDIT_THREADS; "
                                                           "default 1 for the toy world on a CPU, else torch's)")
    p.add_argument("--queue-size", type=int, default=Limits.queue_size, help="requests that may wait")
    p.add_argument("--max-steps", type=int, default=Limits.max_steps, help="steps bound")
    p.add_argument("--max-images", type=int, default=Limits.max_n, help="images per erasure request")
    p.add_argument("--max-iterations", type=int, default=Limits.max_iterations, help="training bound")
    p.add_argument("--max-upload-mb", type=float, default=Limits.max_upload_mb, help="upload size bound")
    p.add_argument("--max-audit-s", type=float, default=Limits.max_audit_s,
                   help="an audit sampling past this many seconds stops with a message")
    p.add_argument("--distilled", default=None,
                   help="the Distillation tab's distilled model (a diffusers directory or hub id of the "
                        "same family, VAE and text encoder; default: weights/toy-turbo on the toy world "
                        "when it exists; 'none': none, and the tab says how to make one)")
    p.add_argument("--no-examples", action="store_true", help="do not make examples on an empty folder")
    p.add_argument("--example-iterations", type=int, default=100,
                   help="training steps of the example size slider (when none is found in out/)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    t0 = time.perf_counter()
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    artifacts = os.path.abspath(args.artifacts)
    os.makedirs(artifacts, exist_ok=True)
    os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(artifacts, ".app-cache"))
    try:
        import gradio  # noqa: F401
    except ImportError:
        sys.exit("app.py needs gradio: pip install -e '.[app]' (or: make app)")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = args.threads or int(os.environ.get("CONCEPT_EDIT_THREADS", 0) or 0)
    if not threads and device == "cpu" and args.model is None:
        # the 64 px toy world gains little from threads and loses much when the cores are
        # shared (measured on a busy 2-core machine: 1.0-1.5 s a slider move with one thread,
        # 10-12 s with two)
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    import concept_edit as ce

    load_args = dict(model=args.model, device=device, dtype=args.dtype)
    model = ce.load(**load_args)
    limits = Limits(queue_size=args.queue_size, max_steps=args.max_steps, max_n=args.max_images,
                    max_iterations=args.max_iterations, max_upload_mb=args.max_upload_mb,
                    max_audit_s=args.max_audit_s)
    engine = Engine(model, artifacts, limits, load_args, distilled=load_distilled(args, device))
    print(f"[app] {model.source} ({engine.family}) on {device} loaded in {time.perf_counter() - t0:.1f} s",
          flush=True)
    if not args.no_examples:
        make_examples(engine, iterations=args.example_iterations)
    demo = build_app(engine)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[app] listening on {args.host}: anyone who can reach this machine can use the app",
              flush=True)
    if args.share:
        print("[app] --share: a public link is opened; anyone with it can use the app", flush=True)
    serve(demo, engine, args.host, args.port, args.share, block=False)
    print(f"[app] serving {time.perf_counter() - t0:.1f} s after start", flush=True)
    # the page's first request, rendered once now (torch warms up, the base run is cached): a
    # page opened meanwhile waits for it and then needs the slider image only
    _quietly(engine.slide, **engine.first_request)
    demo.block_thread()


def load_distilled(args, device: str):
    """The Distillation tab's student: --distilled, else weights/toy-turbo on the toy world when
    it exists, else None (the tab says how to make one)."""
    import concept_edit as ce

    name = args.distilled
    if name is None and args.model is None and os.path.isdir(DEFAULT_DISTILLED):
        name = DEFAULT_DISTILLED
    if not name or name.lower() == "none":
        return None
    try:
        model = ce.load(name, device=device, dtype=args.dtype)
    except Exception as e:  # the app still starts; the tab shows how to make a distilled model
        print(f"[app] could not load the distilled model {name}: {_one_line(e)}", flush=True)
        return None
    print(f"[app] distilled model: {model.source} ({model.defaults['steps']} steps, guidance "
          f"{model.defaults['guidance']:g})", flush=True)
    return model


def _quietly(fn, **kw):
    try:
        fn(**kw)
    except Exception as e:  # a warm-up only; the page shows any error itself
        print(f"[app] warm-up: {_one_line(e)}", flush=True)


if __name__ == "__main__":
    main()
