"""The app's model side (no gradio): ``Engine`` (sliders and erasure A/B; through
``app_tabs.TabsMixin`` the SliderSpace and Distillation tabs, through ``app_audit.AuditMixin`` the
Audit tab, through ``app_files.FilesMixin`` training and uploads) and its request limits. The first-start examples are ``app_examples.py``;
``app.py`` builds the page on top of it.

Example::

    >>> import concept_edit as ce
    >>> from app_engine import Engine
    >>> engine = Engine(ce.load(), "out/app-artifacts")
    >>> engine.slide("a red circle", 0, 25, 0, 5.0, 64, [])     # doctest: +SKIP
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import threading
import time

REPO = os.path.dirname(os.path.abspath(__file__))
from app_files import EXT, TRAIN_RECIPE, FilesMixin, check_safetensors_header, safe_name  # noqa: E402,F401
from app_audit import AuditMixin  # noqa: E402
from app_tabs import AppError, TabsMixin, check_float, check_int, check_text, one_line as _one_line  # noqa: E402

DEFAULT_DISTILLED = os.path.join(REPO, "weights", "toy-turbo")
DEFAULT_ARTIFACTS = os.path.join(REPO, "out", "app-artifacts")
MAX_SEED = 2**31 - 1
API_NAMES = ("slide", "strip", "erase", "train", "upload", "artifacts", "space_gallery", "space_strip",
             "space_compose", "distill", "audit")
N_SLOTS = 4
DEFAULT_PROMPT = "a red circle"
TOY_SOURCE = "concept_edit:toy-world"


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


# -- the model side (no gradio here) -------------------------------------------------------------
class Engine(TabsMixin, AuditMixin, FilesMixin):
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
        self.init_tabs(distilled)   # SliderSpace, Distillation (app_tabs.py), Audit (app_audit.py)

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
        from concept_edit.core.lora import recommended_schedule

        router, want = self.model.router, dict(active)
        for p, (h, _) in self._loaded.items():
            router.set_scale(h.name, want.get(p, 0.0))
            # the page's start step starts the run; the file's stop (if any) still holds
            router.set_schedule(h.name, recommended_schedule(h.meta, start=0.0))
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


def _uint8(images):
    """[0, 1] floats -> uint8, as ``concept_edit.generate`` rounds them."""
    import numpy as np

    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
