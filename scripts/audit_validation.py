"""The audit suite's validation table on the toy world: five edits x every probe, one budget.

Example (the command behind docs/audit.md's tables; edits are reused when present)::

    python scripts/audit_validation.py --budget full --work out/audit-val-full > table.md

Builds the UCE, ESD-x and ESD-u edits of ``circle`` from the shipped configs, audits them with
``concept-edit audit`` (plus the null edit and the negative-prompt baseline) one after the
other, and prints a markdown table of edited per-sample rate / best-of-N per probe, with the
base model's own rates in the first column and the seconds each audit took.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CONCEPT = "configs/audit/circle.yaml"
EDITS = {  # name -> (file, command that makes it)
    "uce": ("uce.safetensors", ["uce", "--config", "configs/uce/erase-circle.yaml"]),
    "esd-x": ("esd-x.safetensors", ["esd", "--config", "configs/esd/toy-circle-x.yaml"]),
    "esd-u": ("esd-u.safetensors", ["esd", "--config", "configs/esd/toy-circle-x.yaml", "--variant", "u"]),
}
AUDITS = {"no edit": [], "UCE": ["--edit", "uce"], "ESD-x": ["--edit", "esd-x"],
          "ESD-u": ["--edit", "esd-u"], "negative prompt": ["--negative-prompt", "circle"]}


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "concept_edit.cli.main", *args]
    print("+", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def cell(s: dict) -> str:
    return f"{s['rate']:.2f} / {s['best_of_n']:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="full", choices=("quick", "full"))
    ap.add_argument("--work", default="out/audit-val", help="edits and reports go here")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    for name, (fname, cmd) in EDITS.items():
        path = os.path.join(a.work, fname)
        if not os.path.exists(path):
            cli(*cmd, "--out", path)
    results = {}
    for label, extra in AUDITS.items():
        rep = os.path.join(a.work, "report-" + label.replace(" ", "-"))
        if not os.path.exists(os.path.join(rep, "results.json")):
            extra = [os.path.join(a.work, EDITS[x][0]) if x in EDITS else x for x in extra]
            cli("audit", *extra, "--concept", CONCEPT, "--budget", a.budget, "--seed", str(a.seed),
                "--report", rep)
        with open(os.path.join(rep, "results.json")) as f:
            results[label] = json.load(f)
    first = next(iter(results.values()))
    cols = list(results)
    print(f"| probe (N) | base (reference) | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for probe, p in first["probes"].items():
        if p.get("status") != "ok":
            continue
        row = [f"{probe} ({p.get('N', '?')})", cell(p["summary"]["base"])]
        for c in cols:
            q = results[c]["probes"].get(probe, {})
            row.append(cell(q["summary"]["edited"]) if q.get("status") == "ok" else q.get("status", "-"))
        print("| " + " | ".join(row) + " |")
    print("| seconds per audit | | " + " | ".join(f"{results[c]['total_time_s']:.0f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
