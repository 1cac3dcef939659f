"""The app's SliderSpace browser and Distillation tabs (model side), and the request checks
that app.py and they share.

``TabsMixin`` is a part of ``app.Engine`` kept in its own file: it uses the engine's artifacts
folder (``resolve``/``meta``), its sampling checks, its loaded-slider machinery and its locks, and
follows the same rules: inputs are checked first (``AppError``, one line), only paths inside the
artifacts folder are used, and whatever changes adapters or weights runs under a lock (``lock``
for the served model; ``train_lock`` for the background copies that audits run on, so that the
page keeps serving meanwhile). No gradio here; only public names of concept_edit.
"""
from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import time

REPO = os.path.dirname(os.path.abspath(__file__))
AUDIT_CONCEPTS = os.path.join(REPO, "configs", "audit")
MANIFEST = "manifest.json"
SHEET = "sheet.png"
EXT = ".safetensors"
MAX_MANIFEST_BYTES = 2 * 2**20
MAX_SHEET_BYTES = 32 * 2**20
MAX_SHEET_PIXELS = 4096 * 4096
MAX_SPACES = 200                   # spaces listed (the folder and one level below)
DISTILL_HOWTO = ("concept-edit toyworld distill --work .cache/toy-turbo --out weights/toy-turbo")
AUDIT_BUDGET = "quick"
DIVERSITY_COLS = ["set", "n", "H(shape)", "H(colour)", "H(size)", "H(background)", "position spread",
                  "pairwise distance", "Vendi"]
AUDIT_COLS = ["probe", "metric", "base rate", "base best-of-N", "edited rate", "edited best-of-N", "N",
              "unit", "time s", "status"]


class AppError(ValueError):
    """A request the app refuses: a one-line message for the page and the API."""


# -- small checks --------------------------------------------------------------------------------
def one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _number(value, what: str) -> float:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise AppError(f"{what} must be a number, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise AppError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(f):
        raise AppError(f"{what} must be a finite number, got {value!r}")
    return f


def check_int(value, what: str, lo: int, hi: int) -> int:
    f = _number(value, what)
    if f != int(f):
        raise AppError(f"{what} must be a whole number, got {value!r}")
    if not lo <= f <= hi:
        raise AppError(f"{what} must be between {lo} and {hi}, got {int(f)}")
    return int(f)


def check_float(value, what: str, lo: float, hi: float) -> float:
    f = _number(value, what)
    if not lo <= f <= hi:
        raise AppError(f"{what} must be between {lo:g} and {hi:g}, got {f:g}")
    return f


def check_text(value, what: str, limit: int, example: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AppError(f"the {what} is empty: write one, e.g. {example!r}")
    if len(value) > limit:
        raise AppError(f"the {what} is {len(value)} characters long; at most {limit}")
    return value.strip()


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


# -- the engine's part ---------------------------------------------------------------------------
class TabsMixin:
    """SliderSpace browser and Distillation actions of ``app.Engine`` (and the state of ``app_audit``)."""

    def init_tabs(self, distilled=None, audit_concepts: str | None = None) -> None:
        self.distilled = None
        self.distill_problem: str | None = None
        self._spaces: dict[str, tuple[tuple, dict]] = {}
        self._audit_model = None
        self._reports: collections.deque = collections.deque()
        self.audit_dir = audit_concepts or AUDIT_CONCEPTS
        if distilled is not None:
            from concept_edit.methods.distill import check_pair

            try:
                check_pair(self.pipe, distilled.pipe)
                self.distilled = distilled
            except ValueError as e:
                self.distill_problem = f"the distilled model {distilled.source} does not fit: {one_line(e)}"

    # -- SliderSpace: finding and reading spaces --------------------------------------------------
    def resolve_space(self, name) -> str:
        """A picked space (a folder name) -> its real path, only inside the artifacts folder."""
        if name is None or (isinstance(name, str) and not name.strip()):
            raise AppError("no space picked: choose one from the list (a folder written by "
                           "`concept-edit sliderspace discover` inside the artifacts folder)")
        if not isinstance(name, str) or "\x00" in name or len(name) > 1024:
            raise AppError(f"bad space name {str(name)[:80]!r}")
        path = os.path.realpath(os.path.join(self.root, name))
        if path == self.root or os.path.commonpath([self.root, path]) != self.root:
            raise AppError(f"{name!r} is outside the artifacts folder; only spaces inside it can be chosen")
        if any(part.startswith(".") for part in os.path.relpath(path, self.root).split(os.sep)):
            raise AppError(f"{name!r} is a hidden folder; only the listed spaces can be chosen")
        if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, MANIFEST)):
            raise AppError(f"{name!r} is not a SliderSpace folder in the artifacts folder (no {MANIFEST}); "
                           "make one with `concept-edit sliderspace discover --out DIR`")
        return path

    def space_names(self) -> list[str]:
        """Folders holding a manifest.json: the artifacts folder's subfolders and theirs."""
        out = []
        for top in sorted(os.scandir(self.root), key=lambda e: e.name):
            if top.name.startswith(".") or not top.is_dir():
                continue
            subs = [top.name] + sorted(f"{top.name}/{e.name}" for e in os.scandir(top.path)
                                       if not e.name.startswith(".") and e.is_dir())
            out += [s for s in subs if os.path.isfile(os.path.join(self.root, s, MANIFEST))]
            if len(out) >= MAX_SPACES:
                break
        return out[:MAX_SPACES]

    def space_choices(self) -> list[tuple[str, str]]:
        rows = []
        for name in self.space_names():
            try:
                sp = self.space(name)
                rows.append((f"{name} ({len(sp['sliders'])} directions)", name))
            except AppError:
                continue
        return rows

    def space(self, name) -> dict:
        """The space's sliders (paths checked like any artifact), prompt and sheet; cached."""
        d = self.resolve_space(name)
        man = os.path.join(d, MANIFEST)
        stamp = self._stamp(man)
        hit = self._spaces.get(d)
        if hit and hit[0] == stamp and all(os.path.isfile(s["path"]) for s in hit[1]["sliders"]):
            return hit[1]
        shown = self._shown(d)
        if os.path.getsize(man) > MAX_MANIFEST_BYTES:
            raise AppError(f"{shown}/{MANIFEST} is over {MAX_MANIFEST_BYTES >> 20} MB; not a SliderSpace manifest")
        try:
            with open(man, encoding="utf-8") as f:
                manifest = json.load(f)
        except (ValueError, UnicodeDecodeError):
            raise AppError(f"{shown}/{MANIFEST} is not JSON; re-run `concept-edit sliderspace discover`") from None
        if not isinstance(manifest, dict):
            raise AppError(f"{shown}/{MANIFEST} is not a SliderSpace manifest (not a JSON object)")
        fam = manifest.get("family")
        if fam is not None and fam != self.family:
            raise AppError(f"{shown} was discovered on a {fam} model; this app runs a {self.family} model")
        edits = manifest.get("edits")
        if not isinstance(edits, list) or not edits:
            raise AppError(f"{shown}/{MANIFEST} lists no sliders; re-run `concept-edit sliderspace discover`")
        if len(edits) > self.limits.max_space:
            raise AppError(f"{shown} holds {len(edits)} sliders; the app shows at most {self.limits.max_space}")
        info = {s.get("name"): s for s in manifest.get("sliders") or [] if isinstance(s, dict)}
        sliders = []
        for i, e in enumerate(edits):
            f = e.get("file") if isinstance(e, dict) else None
            if not isinstance(f, str) or not f.endswith(EXT) or os.path.basename(f) != f or f.startswith("."):
                raise AppError(f"{shown}/{MANIFEST}: entry {i} names no {EXT} file of the folder")
            path = self.resolve(os.path.relpath(os.path.join(d, f), self.root))
            m = self.meta(path)
            base = m.get("base") if isinstance(m.get("base"), dict) else {}
            if m.get("kind") != "lora":
                raise AppError(f"{shown}/{f} is a {m.get('kind')} edit, not a slider")
            if base.get("family") != self.family:
                raise AppError(f"{shown}/{f} was made for a {base.get('family')} model; this app runs "
                               f"a {self.family} model")
            stem = f[: -len(EXT)]
            rec = info.get(stem) if isinstance(info.get(stem), dict) else {}
            lora = m.get("lora") if isinstance(m.get("lora"), dict) else {}
            try:
                start = min(max(float(lora.get("start", 0.0)), 0.0), 1.0)
            except (TypeError, ValueError):
                start = 0.0
            label = stem
            if isinstance(rec.get("moves"), str) and rec["moves"]:
                label += f" · {rec['moves']}"
            if isinstance(rec.get("explained_variance"), (int, float)):
                label += f" · {100 * rec['explained_variance']:.0f}% var"
            sliders.append(dict(name=stem, path=path, meta=m, label=label, start=start))
        prompts = [p for p in manifest.get("prompts") or [] if isinstance(p, str) and p.strip()]
        sheet = os.path.join(d, SHEET)
        sp = dict(dir=d, shown=shown, sliders=sliders, prompt=prompts[0] if prompts else "",
                  sheet=sheet if os.path.isfile(sheet) else None)
        self._spaces[d] = (stamp, sp)
        return sp

    def space_sheet(self, sp: dict):
        """The space's sheet.png as uint8 (H, W, 3), or None (no sheet, or one too large)."""
        if not sp["sheet"]:
            return None
        from PIL import Image
        import numpy as np

        path = os.path.realpath(sp["sheet"])
        if os.path.commonpath([self.root, path]) != self.root or os.path.getsize(path) > MAX_SHEET_BYTES:
            return None
        try:
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > MAX_SHEET_PIXELS:
                    return None
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError):
            return None

    def _space_settings(self, name, prompt, seed):
        sp = self.space(name)
        s = self.check_sampling(prompt, seed, self.steps, self.guidance, self.size)
        return sp, s

    def _space_scale(self, sl: dict, scale, what: str) -> float:
        lo, hi = self.bounds(sl["meta"])
        return check_float(scale, what, lo, hi)

    def _start(self, sl: dict, s: dict) -> int:
        return min(round(sl["start"] * s["steps"]), s["steps"])

    # -- SliderSpace: actions ---------------------------------------------------------------------
    def space_gallery(self, name, prompt, seed, scale):
        """One image per direction at +scale (same prompt and seed), the sheet, a summary."""
        sp, s = self._space_settings(name, prompt, seed)
        scales = [self._space_scale(sl, scale, f"scale ({sl['name']})") for sl in sp["sliders"]]
        t0 = time.perf_counter()
        with self.lock:
            base = self._base_run(s)[0]
            imgs = [self._slider_image(s, [(sl["path"], sc)], self._start(sl, s))
                    for sl, sc in zip(sp["sliders"], scales)]
        dt = time.perf_counter() - t0
        items = [(base, "base (scale 0)")] + [(img, f"{i}: {sl['label']}") for i, (img, sl)
                                              in enumerate(zip(imgs, sp["sliders"]))]
        info = (f"**{sp['shown']}**: {len(imgs)} directions at scale {float(scale):+g}, {s['prompt']!r}, "
                f"seed {s['seed']}, {s['steps']} steps, {dt:.1f} s. Click a direction for its strip.")
        return items, self.space_sheet(sp), info

    def space_strip(self, name, index, prompt, seed, seeds, scale):
        """One direction at -scale..+scale (five columns) on ``seeds`` seeds (rows)."""
        sp, s = self._space_settings(name, prompt, seed)
        k = len(sp["sliders"])
        i = check_int(index, "direction", 0, k - 1)
        n = check_int(seeds, "number of seeds", 1, self.limits.max_strip_seeds)
        sl = sp["sliders"][i]
        top = abs(self._space_scale(sl, scale, f"scale ({sl['name']})"))
        if top == 0:
            raise AppError("the scale is 0: the strip goes from -scale to +scale; pick a scale, e.g. 2")
        self._space_scale(sl, -top, f"scale ({sl['name']})")
        scales = [round(top * f, 3) for f in (-1.0, -0.5, 0.0, 0.5, 1.0)]
        if s["seed"] + n - 1 > 2**31 - 1:
            raise AppError(f"seeds {s['seed']}..{s['seed'] + n - 1} pass the largest seed {2**31 - 1}")
        rows = []
        with self.lock:
            for j in range(n):
                sj = dict(s, seed=s["seed"] + j)
                rows.append([self._slider_image(sj, [(sl["path"], sc)], self._start(sl, sj)) for sc in scales])
        return self.ce.labelled_grid(rows, cols=[f"{sc:+g}" for sc in scales],
                                     rows=[f"seed {s['seed'] + j}" for j in range(n)],
                                     tile=96 if s["height"] <= 128 else 192,
                                     title=f"{sp['shown']} / {sl['label']}: {s['prompt']!r}")

    def space_compose(self, name, prompt, seed, pairs):
        """(base, image with several directions at their scales, info)."""
        sp, s = self._space_settings(name, prompt, seed)
        by_name = {sl["name"]: sl for sl in sp["sliders"]}
        active, seen = [], set()
        for j, (d, sc) in enumerate(pairs, 1):
            if d is None or (isinstance(d, str) and not d.strip()):
                continue
            if not isinstance(d, str) or d not in by_name:
                raise AppError(f"direction {j}: {str(d)[:80]!r} is not a slider of {sp['shown']} "
                               f"(pick one of {', '.join(by_name)[:200]})")
            if d in seen:
                raise AppError(f"{d} is picked twice; pick each direction once")
            seen.add(d)
            active.append((by_name[d], self._space_scale(by_name[d], sc, f"scale {j} ({d})")))
        k = min((self._start(sl, s) for sl, _ in active), default=s["steps"])
        t0 = time.perf_counter()
        with self.lock:
            base = self._base_run(s)[0]
            img = self._slider_image(s, [(sl["path"], sc) for sl, sc in active], k)
        used = ", ".join(f"{sl['name']} @ {sc:g}" for sl, sc in active) or "no direction picked"
        return base, img, f"{sp['shown']}: {used}; from step {k} of {s['steps']}. {time.perf_counter() - t0:.2f} s"

    # -- Distillation -----------------------------------------------------------------------------
    def distill_note(self) -> str | None:
        """None when a distilled model is loaded, else one line on how to get one."""
        if self.distilled is not None:
            return None
        why = f"{self.distill_problem[0].upper()}{self.distill_problem[1:]}. " if self.distill_problem else ""
        return (f"{why}No distilled model loaded: make one with `{DISTILL_HOWTO}` (a 4-step student of the "
                "toy world), then start the app again (it picks up `weights/toy-turbo`; or pass "
                "`--distilled DIR`).")

    @property
    def distilled_steps(self) -> int:
        return int(self.distilled.defaults["steps"]) if self.distilled is not None else 4

    def distill(self, prompt, seed, n, switch, steps):
        """Base, distilled and hybrid images for the same seeds on the distilled model's schedule,
        with the diversity numbers of each set."""
        if self.distilled is None:
            raise AppError(self.distill_note())
        L = self.limits
        prompt = check_text(prompt, "prompt", L.max_prompt, "a circle")
        n = check_int(n, "number of images", 2, L.max_distill_n)
        seed = check_int(seed, "seed", 0, 2**31 - n)
        steps = check_int(steps, "distilled steps", 1, L.max_steps)
        switch = check_int(switch, "switch step", 0, steps)
        from concept_edit.methods.distill import hybrid_sample

        seeds = [seed + i for i in range(n)]
        dist = self.distilled
        runs = {}
        t0 = time.perf_counter()

        def run(k):
            res = hybrid_sample(self.pipe, dist.pipe, [prompt] * n, seed=seeds, switch=k, steps=steps,
                                allow_pure=True, height=self.size, width=self.size)
            return _uint8(res.images), res

        with self.lock:
            with contextlib.ExitStack() as st:   # the served model's sliders stay off
                st.enter_context(self.model.router.disabled())
                if dist is not self.model:
                    st.enter_context(dist.router.disabled())
                try:
                    for label, k in (("base", steps), ("distilled", 0), ("hybrid", switch)):
                        key = ("distill", dist.source, label, prompt, seed, n, steps) + ((k,) if label == "hybrid" else ())
                        runs[label] = self._cached(key, lambda k=k: run(k))
                except ValueError as e:
                    raise AppError(f"hybrid sampling: {one_line(e)}") from None
        dt = time.perf_counter() - t0
        table = [[label] + self.diversity_row(imgs) for label, (imgs, _) in runs.items()]
        ts = ", ".join(str(int(t)) for t in runs["distilled"][1].timesteps)
        gb, gd = self.model.defaults["guidance"], dist.defaults["guidance"]
        sw = ("the distilled model alone" if switch == 0 else "the base alone" if switch == steps
              else f"{switch} base step(s), then {steps - switch} distilled")
        text = (f"{n} seeds from {seed}, {prompt!r}; the distilled model's {steps}-step schedule (t = {ts}). "
                f"Base: {self.model.source} on every step (guidance {gb:g}); distilled: {dist.source} "
                f"(guidance {gd:g}); hybrid: {sw}. {dt:.1f} s. "
                + ("Entropy in bits of the toy classifier's labels; pairwise distance and Vendi on toy-CLIP "
                   "embeddings; position spread of the shapes' centroids (fraction of the side)."
                   if self.toy else "Only the position spread is measured off the toy world."))
        return {k: v[0] for k, v in runs.items()}, table, text

    def diversity_row(self, images) -> list:
        from concept_edit.eval.diversity import diversity_report

        rep = diversity_report(images, labels="toy" if self.toy else None, embed="toy" if self.toy else None)
        ent = {a: abs(v) for a, v in rep.get("entropy", {}).items()}   # no -0.0 in the table
        return ([rep["n"]] + [ent.get(a) for a in ("shape", "colour", "size", "background")]
                + [rep.get("position_spread"), rep.get("pairwise_distance"), rep.get("vendi")])


def _uint8(images):
    import numpy as np

    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
