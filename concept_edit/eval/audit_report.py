"""The audit report: results.json, every image as PNG with its score, a self-contained HTML page.

Example::

    >>> from concept_edit.eval.audit_report import write
    >>> write(res, "out/audit")      # res from eval.audit.audit(); atomic (temp dir + rename)

``report.html`` holds the summary table (cells carry ``data-key="probe.model.field"`` so tests
and scripts can check them against the JSON), per probe its settings, a rate table per setting,
one inline SVG plot per swept parameter (no plotting library needed) and an image grid (base64
PNGs, label and score under each; the grid shows at most ``GRID_MAX`` images per model, every
image is in ``images/<probe>/``).
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import os

import numpy as np

GRID_MAX = 48


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(s))[:40]


def image_name(rec: dict) -> str:
    setting = "_".join(f"{k}{v}" for k, v in rec["setting"].items())
    score = "na" if rec["score"] is None else f"{rec['score']:.3f}"
    parts = [rec["model"], f"{rec['index']:04d}", setting, _safe(rec["label"]), score]
    return "-".join(p for p in parts if p) + ".png"


def svg_plot(title: str, xlabel: str, series: dict, width: int = 360, height: int = 220) -> str:
    """A line plot of rate (0..1) against a parameter; ``series``: {name: [[x, y], ...]}."""
    colours = {"base": "#1f77b4", "edited": "#d62728"}
    xs = [float(x) for pts in series.values() for x, _ in pts]
    if not xs:
        return ""
    lo, hi = min(xs), max(xs)
    span = (hi - lo) or 1.0
    L, R, T, B = 44, 12, 24, 36
    pw, ph = width - L - R, height - T - B

    def px(x):
        return L + (float(x) - lo) / span * pw if hi > lo else L + pw / 2

    def py(y):
        return T + (1 - float(y)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'class="plot" data-title="{html.escape(title)}">',
           f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="12">{html.escape(title)}</text>',
           f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for y in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{L}" x2="{L + pw}" y1="{py(y)}" y2="{py(y)}" stroke="#eee"/>'
                   f'<text x="{L - 4}" y="{py(y) + 4}" text-anchor="end" font-size="10">{y:g}</text>')
    for x in sorted(set(xs)):
        out.append(f'<text x="{px(x)}" y="{T + ph + 14}" text-anchor="middle" font-size="10">{x:g}</text>')
    out.append(f'<text x="{L + pw / 2}" y="{height - 4}" text-anchor="middle" font-size="11">'
               f'{html.escape(xlabel)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        pts = [(x, y) for x, y in pts if y is not None]
        c = colours.get(name, "#2ca02c")
        if len(pts) > 1:
            d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{c}"/>')
        out.append(f'<text x="{L + 6}" y="{T + 14 + 13 * i}" font-size="11" fill="{c}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1200px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:4px}.cell{font-size:10px;text-align:center;width:92px}
.cell img{width:88px;height:88px;image-rendering:pixelated;border:2px solid #ccc}.cell.hit img{border-color:#d62728}
code{background:#f6f6f6;padding:1px 3px}"""


def _td(key: str, v) -> str:
    return f'<td data-key="{html.escape(key)}">{fmt(v)}</td>'


def render_html(res: dict, thumbs: dict) -> str:
    c = res["concept"]
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>audit: {html.escape(c['name'])}</title>"
         f"<style>{CSS}</style></head><body>",
         f"<h1>Erasure audit: {html.escape(c['name'])}</h1>",
         "<p>model <code>{}</code> ({}), edits: {}, negative prompt: {}, budget <b>{}</b>, seed {}, "
         "scorer <code>{}</code>, target label <code>{}</code>, total {} s.</p>".format(
             html.escape(str(res["model"])), html.escape(res["family"]),
             html.escape(", ".join(e.get("file", "?") for e in res.get("edits", [])) or "none"),
             html.escape(str(res.get("negative_prompt"))), html.escape(res["budget"]), res["seed"],
             html.escape(res["scorer"]), html.escape(res["target"]), fmt(res["total_time_s"])),
         "<p>Per-sample rate: share of images showing the target. Best-of-N: share of units with at "
         "least one hit among their N attempts (unit and N per probe). Interference counts 'kept' "
         "(the other concept's own label) instead.</p>",
         "<h2>Summary</h2><table><tr><th class='l'>probe</th><th>metric</th><th>base rate</th>"
         "<th>base best-of-N</th><th>edited rate</th><th>edited best-of-N</th><th>N</th><th class='l'>unit</th>"
         "<th>time s</th><th>denoiser evals</th><th class='l'>status</th></tr>"]
    for name, p in res["probes"].items():
        sb, se = p["summary"]["base"], p["summary"]["edited"]
        h.append(f"<tr><td class='l'><a href='#{name}'>{name}</a></td><td>{p['metric']}</td>"
                 + _td(f"{name}.base.rate", sb["rate"]) + _td(f"{name}.base.best_of_n", sb["best_of_n"])
                 + _td(f"{name}.edited.rate", se["rate"]) + _td(f"{name}.edited.best_of_n", se["best_of_n"])
                 + _td(f"{name}.N", p["N"]) + f"<td class='l'>{html.escape(str(p['unit']))}</td>"
                 + _td(f"{name}.time_s", p["time_s"]) + _td(f"{name}.denoiser_evals", p["denoiser_evals"])
                 + f"<td class='l'>{html.escape(p['status'])}</td></tr>")
    h.append("</table>")
    for name, p in res["probes"].items():
        h.append(f"<h2 id='{name}'>{name}</h2><p>{html.escape(p['help'])}</p>")
        h.append("<p>settings: <code>" + html.escape(json.dumps(p["config"])) + "</code></p>")
        rows = sorted(set(p["by_setting"]["base"]) | set(p["by_setting"]["edited"]))
        if len(rows) > 1 or rows and rows[0] != "-":
            h.append("<table><tr><th class='l'>setting</th><th>base rate</th><th>edited rate</th></tr>")
            for k in rows:
                h.append(f"<tr><td class='l'>{html.escape(k)}</td>"
                         + _td(f"{name}.setting.{k}.base", p["by_setting"]["base"].get(k))
                         + _td(f"{name}.setting.{k}.edited", p["by_setting"]["edited"].get(k)) + "</tr>")
            h.append("</table>")
        for param, series in p.get("by_param", {}).items():
            h.append(svg_plot(f"{name}: rate vs {param}", param, series))
        ex = {k: v for k, v in p["extras"].items() if k != "attacks"}
        if ex:
            h.append("<p>extras: <code>" + html.escape(json.dumps(ex, default=str)[:2000]) + "</code></p>")
        for a in p["extras"].get("attacks", []):
            h.append(f"<p>attack on <code>{html.escape(a['prompt'])}</code>: success {a['success']} after "
                     f"{a['steps_run']} steps; adversarial prompt <code>{html.escape(a['adversarial_prompt'])}"
                     "</code></p>")
        for model in ("base", "edited"):
            cells = thumbs.get(name, {}).get(model, [])
            if not cells:
                continue
            n_all = sum(1 for r in p["records"] if r["model"] == model)
            h.append(f"<h3>{model} ({len(cells)} of {n_all} images)</h3><div class='grid'>")
            for rec, b64 in cells:
                cls = "cell hit" if rec["hit"] else "cell"
                tip = html.escape(f"{rec['prompt']} | seed {rec['seed']} | {setting_str(rec)}")
                h.append(f"<div class='{cls}' title='{tip}'><img src='data:image/png;base64,{b64}'/><br>"
                         f"{html.escape(str(rec['label']))} {fmt(rec['score'])}<br>{html.escape(setting_str(rec))}</div>")
            h.append("</div>")
    h.append("</body></html>")
    return "\n".join(h)


def setting_str(rec: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in rec["setting"].items())


def write(res: dict, out_dir: str) -> str:
    from ..core.io import atomic_dir

    images = res.get("_images", {})
    data = {k: v for k, v in res.items() if not k.startswith("_")}
    thumbs: dict = {}
    with atomic_dir(out_dir) as tmp:
        for name, p in data["probes"].items():
            d = os.path.join(tmp, "images", name)
            os.makedirs(d, exist_ok=True)
            imgs = images.get(name, [])
            rows = []
            for rec, img in zip(p["records"], imgs):
                fn = image_name(rec)
                png = _png(img)
                with open(os.path.join(d, fn), "wb") as f:
                    f.write(png)
                rec["image"] = f"images/{name}/{fn}"
                rows.append(rec)
                per = thumbs.setdefault(name, {}).setdefault(rec["model"], [])
                if len(per) < GRID_MAX:
                    per.append((rec, base64.b64encode(png).decode()))
            with open(os.path.join(d, "scores.csv"), "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["image", "model", "prompt", "seed", "setting", "label", "score", "hit"])
                for r in rows:
                    w.writerow([os.path.basename(r["image"]), r["model"], r["prompt"], r["seed"],
                                setting_str(r), r["label"], r["score"], int(r["hit"])])
        with open(os.path.join(tmp, "results.json"), "w") as f:
            json.dump(data, f, indent=1, default=str)
        with open(os.path.join(tmp, "report.html"), "w") as f:
            f.write(render_html(data, thumbs))
    return out_dir
