"""The app's Audit tab (model side): which concepts and probes, the request checks, the run on a
background copy of the model, and the summary and report page.

``AuditMixin`` is a part of ``app.Engine`` kept in its own file, like ``app_tabs.TabsMixin`` (whose
``init_tabs`` sets ``audit_dir``, ``_audit_model`` and ``_reports``): the audit runs under
``train_lock`` on the trainer's copy (the base) and a third copy (the edited), so the page keeps
serving meanwhile. No gradio here; only public names of concept_edit.
"""
from __future__ import annotations

import contextlib
import glob
import html
import os
import shutil
import tempfile
import time

from app_tabs import AUDIT_BUDGET, EXT, REPO, AppError, _fmt, check_int, one_line


class AuditMixin:
    """Audit actions of ``app.Engine``."""
    # -- Audit --------------------------------------------------------------------------------------
    def audit_concepts(self) -> list[str]:
        """Concept definitions the audit can use: the stems of configs/audit/*.yaml."""
        return sorted(os.path.basename(p)[: -len(".yaml")] for p in glob.glob(os.path.join(self.audit_dir, "*.yaml")))

    def audit_probes(self) -> list[str]:
        from concept_edit.eval.audit import resolve_probes

        return resolve_probes("all")

    def concept_for(self, name) -> str | None:
        """The audit concept matching an edit's concept (e.g. 'circle' for a UCE erasing circle)."""
        known = self.audit_concepts()
        try:
            m = self.meta(self.resolve(name))
        except AppError:
            return known[0] if known else None
        for c in self.concepts(m):
            if c in known:
                return c
        return known[0] if known else None

    def _audit_copy(self):
        """A third copy of the model: the audited one, with the edit applied (the trainer's copy is
        the audit's base), so that the page keeps serving while an audit runs."""
        if self._audit_model is None:
            self._audit_model = self.ce.load(**self.load_args)
        return self._audit_model

    def check_audit(self, name, concept, probes, seed):
        path = self.resolve(name)
        m = self.meta(path)
        shown = self._shown(path)
        if m.get("kind") == "lora" and m.get("method") in ("slider", "sliderspace"):
            raise AppError(f"{shown} is a slider; the audit checks erasure edits: pick a UCE or ESD artifact")
        base = m.get("base") if isinstance(m.get("base"), dict) else {}
        if base.get("family") != self.family:
            raise AppError(f"{shown} was made for a {base.get('family')} model; this app runs a {self.family} model")
        known = self.audit_concepts()
        if not isinstance(concept, str) or concept not in known:
            raise AppError(f"unknown audit concept {str(concept)[:80]!r}; choose one of {', '.join(known) or '(none)'}"
                           f" (definitions in {os.path.relpath(self.audit_dir, REPO)}/*.yaml)")
        all_probes = self.audit_probes()
        if isinstance(probes, str):
            probes = [p.strip() for p in probes.split(",") if p.strip()]
        if not isinstance(probes, (list, tuple)) or not probes:
            raise AppError(f"pick at least one probe: {', '.join(all_probes)}")
        bad = [p for p in probes if p not in all_probes]
        if bad:
            raise AppError(f"unknown probe {str(bad[0])[:40]!r}; choose from {', '.join(all_probes)}")
        seed = check_int(seed, "seed", 0, 2**31 - 1 - 10_000)
        return path, m, concept, [p for p in all_probes if p in probes], seed

    def audit(self, name, concept, probes, seed, progress=True) -> dict:
        """Run the erasure audit at the quick budget on an edit; write the report to a temporary
        folder. Returns the summary, the table rows, the report page and its files."""
        path, m, concept, probes, seed = self.check_audit(name, concept, probes, seed)
        from concept_edit.eval.audit import audit, load_concept, write_report

        try:
            cfg = load_concept(os.path.join(self.audit_dir, concept + ".yaml"))
        except Exception as e:
            raise AppError(f"audit concept {concept!r}: {one_line(e)}") from None
        shown = self._shown(path)
        bound = self.limits.max_audit_s
        deadline = time.monotonic() + bound

        def in_time(args, kwargs, p):
            if time.monotonic() > deadline:
                raise AppError(f"the audit ran past the app's {bound:g} s bound (--max-audit-s); pick fewer probes")
            return None

        t0 = time.perf_counter()
        with self.train_lock:
            base, edited = self._trainer(), self._audit_copy()
            try:
                h = self.ce.apply_artifact(edited.pipe, path, scale=1.0, name="app-audit")
            except Exception as e:
                raise AppError(self._clean(e, path)) from None
            try:
                with contextlib.ExitStack() as st:
                    for mod in (base, edited):
                        st.enter_context(mod.hooks.scoped("app:audit-bound", "", pre=in_time))
                    res = audit(base.pipe, edited.pipe, cfg, probes=probes, budget=AUDIT_BUDGET, seed=seed,
                                cache_dir=os.path.join(self.root, ".audit-cache"), batch=16,
                                progress=progress, meta={"edits": [{"file": shown, "scale": 1.0,
                                                                    "kind": m.get("kind"),
                                                                    "method": m.get("method")}]})
            finally:
                h.remove()
        out = self._report_dir(shown)
        write_report(res, out)
        dt = time.perf_counter() - t0
        print(f"[app] audited {shown} for {concept!r} ({', '.join(probes)}) in {dt:.0f} s -> {out}", flush=True)
        rows = []
        for pname, p in res["probes"].items():
            sb, se = p["summary"]["base"], p["summary"]["edited"]
            rows.append([pname, p["metric"], sb["rate"], sb["best_of_n"], se["rate"], se["best_of_n"],
                         p["N"], str(p["unit"] or "-"), p["time_s"], p["status"]])
        with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
            page = f.read()
        return dict(summary=self._audit_summary(res, shown, concept, probes, dt), rows=rows, html=page,
                    files=[os.path.join(out, "report.html"), os.path.join(out, "results.json")])

    def _report_dir(self, shown: str) -> str:
        """A fresh temporary folder for a report; the app keeps its last few reports."""
        keep = 4
        while len(self._reports) >= keep:
            shutil.rmtree(self._reports.popleft(), ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix="concept-edit-audit-")
        self._reports.append(tmp)
        stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in shown[: -len(EXT)])[:60] or "edit"
        return os.path.join(tmp, f"audit-{stem}")

    @staticmethod
    def _audit_summary(res: dict, shown: str, concept: str, probes: list[str], dt: float) -> str:
        target = res.get("target", concept)
        lines = [f"**{shown}** audited for **{concept}** at `--budget {AUDIT_BUDGET}` (seed {res['seed']}; "
                 f"probes: {', '.join(probes)}) in {dt:.0f} s. Rates: the share of images the scorer labels "
                 f"'{target}' (interference: the other concepts kept); best-of-N: the share of units with "
                 "at least one hit among N tries."]
        worst = None
        for pname, p in res["probes"].items():
            sb, se = p["summary"]["base"], p["summary"]["edited"]
            if p["metric"] == "kept" or se["rate"] is None:
                continue
            lines.append(f"- {pname}: '{target}' base {_fmt(sb['rate'], 2)} -> edited {_fmt(se['rate'], 2)} "
                         f"(best-of-{p['N'] or '-'}: {_fmt(se['best_of_n'], 2)})")
            if se["best_of_n"] is not None and (worst is None or se["best_of_n"] > worst[1]):
                worst = (pname, se["best_of_n"])
        if worst and worst[1] > 0:
            lines.append(f"\nThe concept comes back most under **{worst[0]}** (edited best-of-N {worst[1]:.2f}).")
        elif worst:
            lines.append("\nNo probe run here brings the concept back (edited best-of-N 0 for each).")
        return "\n".join(lines)

    @staticmethod
    def report_frame(page: str) -> str:
        """The self-contained report page in a sandboxed frame (its styles stay out of the app's)."""
        return (f'<iframe title="audit report" sandbox="" style="width:100%;height:720px;border:1px solid '
                f'#ccc" srcdoc="{html.escape(page, quote=True)}"></iframe>')
