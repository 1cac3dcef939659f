"""Method quality on the toy world: the tables in docs/ and the closing notes (JSON).

    python scripts/toy_quality.py uce    [--seeds 64] [--out out/quality]
    python scripts/toy_quality.py esd    [--seeds 64]
    python scripts/toy_quality.py slider [--seeds 64]
    python scripts/toy_quality.py uce --config configs/uce/erase-circle.yaml [--set preserve_tokens=last]
    python scripts/toy_quality.py esd --config configs/esd/toy-red-x.yaml [--name red-x] [--set iterations=600]

Every edit is made with the public API / CLI code paths and scored with the toy classifier on
fixed seeds (base and edited images share their noise). Erasure rows carry the in-prompt
retention columns (issue 14): on full prompts that name the erased concept with every other
attribute, each other attribute's rate edited / base on the same seeds, and the value that
replaces the concept most often with its share of the replaced samples. ``--config`` measures
config files (with ``--set`` overrides) instead of the built-in trial list.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from concept_edit import load_pipeline
from concept_edit.eval.toy import SLIDER_PROMPTS, composition_report, erasure_report, slider_report, strip
from concept_edit.toyworld.classifier import load_classifier
from concept_edit.toyworld.pairs import ensure_size_pairs

CONCEPTS = {"circle": {"shape": "circle"}, "red": {"colour": "red"}, "striped": {"background": "striped"},
            "a striped background": {"background": "striped"}}
AXIS = {"circle": "shape", "red": "colour", "striped": "background"}
# Prompt templates in the toy grammar's word order: a concept is edited in the contexts users
# write it in (UCE's `templates`), with the guide '' in the same context.
TEMPLATES = {
    "shape": ["{}", "a {}", "a large {}", "a small {}", "a red {}", "a green {}", "a blue {}", "a yellow {}",
              "a {} on a plain background", "a {} on a striped background", "a {} on a dotted background"],
    "colour": ["{}", "a {} circle", "a {} square", "a {} triangle", "a {} star", "a large {} circle",
               "a small {} square", "a {} triangle on a plain background", "a {} star on a striped background",
               "a {} circle on a dotted background"],
    "background": ["a {} background", "a circle on a {} background", "a square on a {} background",
                   "a triangle on a {} background", "a star on a {} background",
                   "a red circle on a {} background", "a large square on a {} background",
                   "a small star on a {} background"],
}

# guide_eta per axis: objects need the push past the guide, attributes do not (eta 1 on
# 'striped' or 'red' damages other attributes: see docs/uce.md)
ETA = {"shape": 1.0, "colour": 0.0, "background": 0.0}
ATTR_GUIDE = {"others": False}


def expand(concepts, keep):
    """(edit prompts, guides, preserve prompts) for concepts erased in their contexts."""
    edit, guide, pres, etas = [], [], [], []
    for c in concepts:
        for t in TEMPLATES[AXIS[c]]:
            edit.append(t.format(c))
            if AXIS[c] != "shape" and ATTR_GUIDE["others"]:  # toward the other values, averaged
                guide.append("|".join(t.format(k) for k in keep[c]))
            else:
                guide.append(" ".join(t.format("").split()))
            pres += [t.format(k) for k in keep[c]
                     # a preserved prompt must not contain another erased concept
                     if not any(o in t.format(k).split() for o in concepts)]
            etas.append(ETA[AXIS[c]])
    return edit, guide, pres, etas


def uce_cfg(concepts, a, policy=None, **kw):
    from concept_edit.methods.uce import UceConfig

    if not a.templates:
        return UceConfig(edit=list(concepts), preserve=sum((KEEP[c] for c in concepts), []),
                         guide_eta=a.eta, token_policy=policy or a.policy, **kw)
    edit, guide, pres, etas = expand(concepts, KEEP)
    return UceConfig(edit=edit, guide=guide, preserve=pres, guide_etas=etas,
                     token_policy=policy or a.policy, **kw)


KEEP = {"circle": ["square", "triangle", "star"], "red": ["green", "blue", "yellow"],
        "striped": ["plain", "dotted"]}


def retention_row(rep: dict) -> dict:
    """The table columns of one erasure report (the in-prompt columns of issue 14)."""
    row = {"concept_shown": [round(rep["target"]["base"], 3), round(rep["target"]["edited"], 3)],
           "keep_other_values": round(rep["others"]["keep_ratio"], 3),
           "other_attr_points": {k[:-4]: round(v["delta_points"], 1) for k, v in rep["others"].items()
                                 if k.endswith("_acc")}}
    ip = rep.get("in_prompt")
    if ip:
        row["in_prompt_shown"] = [round(ip["concept_shown"]["base"], 3), round(ip["concept_shown"]["edited"], 3)]
        row["in_prompt_ratio"] = {a: round(v["ratio"], 3) for a, v in ip["attributes"].items()}
        row["min_ratio"] = round(ip["min_ratio"], 3)
        rp = ip["replacement"]
        row["replacement"] = {"top": rp["top"], "top_share": round(rp["top_share"], 3), "n": rp["n"]}
    return row


def print_row(name: str, concept: str, row: dict) -> None:
    r = row.get("in_prompt_ratio", {})
    rp = row.get("replacement", {})
    print(f"ROW {name} [{concept}] shown {row['concept_shown'][0]:.2f}->{row['concept_shown'][1]:.2f} "
          f"keep {row['keep_other_values']:.3f} pts {row['other_attr_points']} | in-prompt "
          + " ".join(f"{a} {v:.2f}" for a, v in r.items())
          + f" | top {rp.get('top')} {rp.get('top_share', 0):.2f} of {rp.get('n', 0)}", flush=True)


def existing(a, name) -> dict:
    """--config runs add their trials to the JSON of earlier runs (same --out)."""
    path = os.path.join(a.out, name + ".json")
    if a.config and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def save(out, name, obj):
    from concept_edit.core.io import atomic_write_text

    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, name + ".json"), json.dumps(obj, indent=1))
    print(json.dumps(obj)[:2000], flush=True)


def run_uce(pipe, a):
    from concept_edit.methods.uce import UceConfig, uce_edit

    clf = load_classifier()
    bases, results = {}, existing(a, "uce")

    def report(name, concepts, cfg):
        if a.only and name not in a.only:
            return
        t0 = time.time()
        res = uce_edit(pipe, cfg, progress=False)
        secs = time.time() - t0
        path = os.path.join(a.out, f"uce-{name}.safetensors")
        res.save(path)
        rows, table = {}, {}
        for c in concepts:
            rep = erasure_report(pipe, CONCEPTS[c], edit=path, seeds=a.seeds, clf=clf, base=bases.get(c),
                                 n_target=a.n_target, n_other=a.n_other, n_retain=a.n_retain)
            bases[c] = rep["_base"]
            rows[c] = strip(rep)
            table[c] = retention_row(rep)
            print_row(name, c, table[c])
        results[name] = {"config": cfg.to_dict(), "solve_seconds": round(secs, 2), "table": table,
                         "reports": rows}
        save(a.out, "uce", results)

    if a.config:
        for f in a.config:
            cfg = with_overrides(UceConfig.from_yaml(f), a.set)
            report(a.name or os.path.splitext(os.path.basename(f))[0], concepts_of(cfg.edit, a), cfg)
        return

    for policy in ("last", "last+eos", "all"):
        report(f"circle-{policy}", ["circle"], uce_cfg(["circle"], a, policy))
    for c in ("red", "striped"):
        report(c, [c], uce_cfg([c], a))
    report("three", ["circle", "red", "striped"], uce_cfg(["circle", "red", "striped"], a))
    # debias: "a circle" -> red/blue 50/50
    if a.only and "debias" not in a.only:
        return
    cfg = UceConfig(mode="debias", edit=["circle"], attributes=["red", "blue"], ratios=[0.5, 0.5],
                    preserve=KEEP["circle"], templates=["a {}"], rounds=a.rounds,
                    debias_samples=a.debias_samples, step=a.step,
                    token_policy=a.policy, seed=1)
    import concept_edit.toyworld.classifier  # noqa: F401
    t0 = time.time()
    res = uce_edit(pipe, cfg, progress=True)
    path = os.path.join(a.out, "uce-debias.safetensors")
    res.save(path)
    from concept_edit.eval.toy import applied, score

    prompts = [{"prompt": "a circle"}]
    base = score(pipe, prompts, a.seeds * 4, clf, seed0=90_000)[0]
    with applied(pipe, [path]):
        ed = score(pipe, prompts, a.seeds * 4, clf, seed0=90_000)[0]
    share = lambda rows, k, v: sum(q[k] == v for q in rows) / len(rows)  # noqa: E731
    results["debias"] = {
        "seconds": round(time.time() - t0, 1), "history": res.history, "eval_seeds": len(ed),
        "colour_base": {c: share(base, "colour", c) for c in ("red", "blue", "green", "yellow")},
        "colour_edited": {c: share(ed, "colour", c) for c in ("red", "blue", "green", "yellow")},
        "circle_base": share(base, "shape", "circle"), "circle_edited": share(ed, "shape", "circle")}
    save(a.out, "uce", results)


def concepts_of(words, a) -> list[str]:
    """The measured concepts of a config: --concepts, else the toy concepts its edit names."""
    if a.concepts:
        return a.concepts
    sets = [set(str(w if isinstance(w, str) else w.get("concept", "")).split()) for w in words]
    common = set.intersection(*sets) if sets else set()   # erase-red: every edit prompt names red
    return [c for c in ("circle", "red", "striped") if c in common] or \
        [c for c in ("circle", "red", "striped") if any(c in s for s in sets)]


def with_overrides(cfg, pairs: list[str]):
    """``--set KEY=VALUE`` (YAML values) applied through the config's strict ``replace``."""
    import yaml

    bad = [kv for kv in pairs if "=" not in kv]
    if bad:
        raise SystemExit(f"--set {bad[0]!r}: write KEY=VALUE, e.g. --set iterations=600")
    return cfg.replace(**{k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in pairs)}) if pairs else cfg


def run_esd(pipe, a):
    from concept_edit.methods.esd import EsdConfig, train_esd

    clf = load_classifier()
    bases, results = {}, existing(a, "esd")
    base_cfg = EsdConfig.from_yaml("configs/esd/toy-circle-x.yaml")

    def trial(name, concepts, base=None, **kw):
        if a.only and name not in a.only:
            return
        cfg = with_overrides((base or base_cfg).replace(concepts=concepts, **kw), a.set)
        path = os.path.join(a.out, f"esd-{name}.safetensors")
        if a.reuse and os.path.exists(path):  # re-measure a trained file (its training row is kept)
            res = None
        else:
            res = train_esd(pipe, cfg, progress=True)
            res.save(path)
            res.edit.remove()
        rows, table = {}, {}
        for c in concepts_of(cfg.concept_names(), a):
            rep = erasure_report(pipe, CONCEPTS[c], edit=path, seeds=a.seeds, clf=clf, base=bases.get(c),
                                 n_target=a.n_target, n_other=a.n_other, n_retain=a.n_retain)
            bases[c] = rep["_base"]
            rows[c] = strip(rep)
            table[c] = retention_row(rep)
            print_row(name, c, table[c])
        prev = results.get(name, {})
        results[name] = {"config": cfg.to_dict(),
                         "train_seconds": round(res.seconds, 1) if res else prev.get("train_seconds"),
                         "final_loss": res.losses[-1] if res else prev.get("final_loss"),
                         "seeds": a.seeds, "table": table, "reports": rows}
        save(a.out, "esd", results)

    if a.config:
        for f in a.config:
            cfg = EsdConfig.from_yaml(f)
            trial(a.name or os.path.splitext(os.path.basename(f))[0], cfg.concepts, base=cfg)
        return

    trial("x-circle", ["circle"])
    trial("u-circle", ["circle"], variant="u")
    trial("x-circle-striped", ["circle", "striped"], iterations=2 * base_cfg.iterations)
    # the style as the grammar writes it: "striped" alone is a prompt the model never saw
    trial("x-circle-striped-bg", ["circle", "a striped background"], iterations=2 * base_cfg.iterations)
    # the style erased in its contexts, guided from the other backgrounds (the measured example)
    two = EsdConfig.from_yaml("configs/esd/toy-circle-striped.yaml")
    trial("x-circle-striped-ctx", two.concepts, base=two.replace(preserve=[]))
    trial("x-circle-striped-ctx-1200", two.concepts, base=two.replace(preserve=[]), iterations=1200)
    # the same with the other shapes on the other backgrounds preserved (the shipped file)
    trial("x-circle-striped-keep", two.concepts, base=two)
    trial("x-anchor-concept-eta2", ["circle"], anchor="{concept}", eta=2.0)
    trial("x-anchor-concept-eta1", ["circle"], anchor="{concept}", eta=1.0)


def run_slider(pipe, a):
    from concept_edit.methods.slider import SliderConfig, train_slider

    clf = load_classifier()
    results = existing(a, "slider")
    paths = {}
    files = [(os.path.splitext(os.path.basename(f))[0], f) for f in a.config] or [
        ("size", "configs/sliders/toy-size.yaml"), ("size-pairs", "configs/sliders/toy-size-pairs.yaml"),
        ("stripes", "configs/sliders/toy-stripes.yaml")]
    for name, cfgfile in files:
        if a.only and name not in a.only:
            continue
        cfg = with_overrides(SliderConfig.from_yaml(cfgfile), a.set)
        for level in cfg.pair_levels():  # the shipped pair configs read data/size-pairs: render it
            ensure_size_pairs(level.low)
        paths[name] = os.path.join(a.out, f"slider-{name}.safetensors")
        train_s = None
        if not (a.reuse and os.path.exists(paths[name])):
            res = train_slider(pipe, cfg, progress=True)
            res.save(paths[name])
            res.edit.remove()
            train_s = round(res.seconds, 1)
        metric = "striped" if "stripe" in name else "radius"
        for start in [] if a.no_sweep else a.start or [None]:  # None: the file's recommended start
            rep = slider_report(pipe, paths[name], seeds=a.seeds, metric=metric, clf=clf, start=start,
                                scales=a.scales,
                                prompts=SLIDER_PROMPTS[::len(SLIDER_PROMPTS) // a.slider_prompts])
            rep["train_seconds"] = train_s
            results[name if len(a.start) < 2 else f"{name}@{start}"] = rep
            save(a.out, "slider", results)
    if not ("size" in paths and "stripes" in paths and (a.compose or len(paths) >= 3)):
        return   # the composition needs a size and a stripes slider (three configs of other names crashed here)
    results["composition"] = composition_report(pipe, (paths["size"], "radius"), (paths["stripes"], "striped"),
                                                seeds=a.seeds, clf=clf,
                                                prompts=SLIDER_PROMPTS[::len(SLIDER_PROMPTS) // a.slider_prompts])
    save(a.out, "slider", results)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["uce", "esd", "slider"])
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument("--out", default="out/quality")
    ap.add_argument("--policy", default="last+eos")
    ap.add_argument("--eta", type=float, default=0.0, help="UCE guide_eta for red/striped/three")
    ap.add_argument("--templates", action="store_true", help="edit concepts in the grammar's contexts")
    ap.add_argument("--attr-eta", type=float, default=None,
                    help="with --templates: guide_eta of colour/background concepts (default 0)")
    ap.add_argument("--attr-guide", choices=["empty", "others"], default="empty",
                    help="with --templates: guide of colour/background concepts: '' or the other "
                         "values averaged ('red' -> 'green|blue|yellow' in the same context)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--step", type=float, default=0.5, help="debias step (alphas move step x error)")
    ap.add_argument("--debias-samples", type=int, default=48)
    ap.add_argument("--n-target", type=int, default=4, help="prompts naming the concept")
    ap.add_argument("--n-other", type=int, default=8, help="full prompts naming other values")
    ap.add_argument("--n-retain", type=int, default=8,
                    help="full prompts naming the concept for the in-prompt retention columns (0 = skip)")
    ap.add_argument("--config", nargs="*", default=[],
                    help="uce/esd/slider: measure these config files (with --set overrides), not the built-in trials")
    ap.add_argument("--name", default="", help="with --config: the trial's name (default: the file's stem)")
    ap.add_argument("--concepts", nargs="*", default=[],
                    help="with --config: concepts to measure (default: circle/red/striped as the config names them)")
    ap.add_argument("--only", nargs="*", default=[], help="run only these trials (names as in the JSON)")
    ap.add_argument("--slider-prompts", type=int, default=8, help="every k-th of the 8 sweep prompts")
    ap.add_argument("--start", type=float, nargs="*", default=[],
                    help="slider start fractions to evaluate (default: each file's recommended start)")
    ap.add_argument("--scales", type=float, nargs="+", default=[-2, -1, 0, 1, 2],
                    help="slider scales swept (a quick screen: -2 0 2)")
    ap.add_argument("--reuse", action="store_true", help="evaluate existing slider / ESD files, no training")
    ap.add_argument("--no-sweep", action="store_true", help="train/reuse sliders, no per-slider sweep")
    ap.add_argument("--compose", action="store_true", help="composition report with --only size stripes")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override slider / ESD / UCE (--config) keys (YAML values), e.g. --set train_after_start=true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="a toy-world pipeline (default: the embedded weights/toy-world; "
                                                   "weights/toy-mmdit for the MMDiT)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ATTR_GUIDE["others"] = a.attr_guide == "others"
    if a.attr_eta is not None:
        ETA.update(colour=a.attr_eta, background=a.attr_eta)
    pipe = load_pipeline(a.model)
    {"uce": run_uce, "esd": run_esd, "slider": run_slider}[a.what](pipe, a)


if __name__ == "__main__":
    main()
