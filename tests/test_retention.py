"""Issue 14: in-prompt retention (hand-made labels), UCE's current-reference preserve policy
against an explicit reference-style solve, and the UCE/ESD configs parse."""
import glob
import os

import pytest
import torch

from concept_edit.eval.toy import retention
from concept_edit.methods.esd import EsdConfig
from concept_edit.methods.uce import UceConfig

ROOT = os.path.join(os.path.dirname(__file__), "..", "configs")


def _lab(shape="circle", colour="yellow", size="small", background="striped"):
    return {"shape": shape, "colour": colour, "size": size, "background": background}


def test_retention_on_hand_made_labels():
    prompts = [
        {"prompt": "a small yellow circle on a striped background",
         "named": {"shape": "circle", "size": "small", "colour": "yellow", "background": "striped"}},
        {"prompt": "a large red circle",
         "named": {"shape": "circle", "size": "large", "colour": "red"}},
    ]
    base = [
        [_lab(), _lab(), _lab(size="large"), _lab(background="plain")],
        [_lab(colour="red", size="large")] * 4,
    ]
    edited = [
        # circle gone on 3 of 4; size as prompted 2 of 4; colour 4 of 4; background 2 of 4
        [_lab(shape="star"), _lab(shape="star", size="large"), _lab(shape="square", size="large",
                                                                    background="plain"),
         _lab(background="dotted")],
        # circle gone on 4 of 4; colour as prompted 2 of 4; size 4 of 4
        [_lab(shape="star", colour="red", size="large"), _lab(shape="triangle", colour="red", size="large"),
         _lab(shape="star", colour="blue", size="large"), _lab(shape="none", colour="green", size="large")],
    ]
    r = retention(base, edited, prompts, {"shape": "circle"})
    a = r["attributes"]
    assert set(a) == {"colour", "size", "background"}                      # the concept's axis is not one
    # size: both prompts name it; base 3/4 + 4/4 = 7/8, edited 2/4 + 4/4 = 6/8
    assert a["size"] == {"base": 7 / 8, "edited": 6 / 8, "ratio": pytest.approx(6 / 7), "prompts": 2}
    # colour: base 8/8, edited 4/4 + 2/4 = 6/8
    assert a["colour"]["base"] == 1.0 and a["colour"]["edited"] == 6 / 8 and a["colour"]["ratio"] == 0.75
    # background: only the first prompt names it; base 3/4, edited 2/4
    assert a["background"]["prompts"] == 1
    assert a["background"]["ratio"] == pytest.approx(2 / 3)
    assert r["min_ratio"] == pytest.approx(2 / 3)
    rep = r["replacement"]                  # 7 replaced: star 4, square 1, triangle 1, none 1
    assert rep["n"] == 7 and rep["top"] == "star" and rep["top_share"] == pytest.approx(4 / 7)
    assert rep["shares"] == pytest.approx({"none": 1 / 7, "square": 1 / 7, "star": 4 / 7, "triangle": 1 / 7})
    # nothing replaced: no shares, top None
    same = retention(base, base, prompts, {"shape": "circle"})
    assert same["replacement"] == {"n": 0, "shares": {}, "top": None, "top_share": 0.0}
    assert all(v["ratio"] == 1.0 for v in same["attributes"].values())


def _text_rows(pipe, prompt):
    """(token embeddings (seq, d), reference last-token index) the way the reference reads them."""
    tok = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    with torch.no_grad():
        emb = pipe.text_encoder(tok.input_ids)[0][0].float()
    return emb, int(tok.attention_mask.sum()) - 2


def test_preserve_last_without_empty_is_the_current_reference(tiny_pipe):
    """preserve_tokens: last, preserve_empty: false, token_policy: last on bare concepts is the
    current reference: one last-word row per edited/preserved concept, the guide '' read at its
    last index (BOS), '' not preserved, W' = (lam W + sum W t c^T + sum W c_p c_p^T) (lam I +
    sum c c^T + sum c_p c_p^T)^-1 for every to_k/to_v."""
    from concept_edit.core.denoise import Denoiser
    from concept_edit.core.families import resolve_sites
    from concept_edit.core.weights import snapshot
    from concept_edit.methods.uce import uce_edit
    from concept_edit.methods.uce.method import InputCapture, build_rows

    pipe = tiny_pipe("sd1")
    edit, guide, keep, lam = ["circle", "red"], ["", "blue"], ["square", "star", "green"], 0.5
    cfg = UceConfig(edit=edit, guide=guide, preserve=keep, token_policy="last",
                    preserve_tokens="last", preserve_empty=False, lamb=lam)
    C, T, P = [], [], []
    for e, g in zip(edit, guide):
        ce, ie = _text_rows(pipe, e)
        tg, ig = _text_rows(pipe, g)
        C.append(ce[ie])
        T.append(tg[ig])
    for p in sorted(keep):                                             # build_rows sorts them
        cp, ip = _text_rows(pipe, p)
        P.append(cp[ip])
    C, T, P = torch.stack(C).double(), torch.stack(T).double(), torch.stack(P).double()

    paths = resolve_sites(pipe, "text_kv")
    cap = InputCapture(pipe, paths, static=True, timesteps=cfg.timesteps, seed=0)
    (ce, tt, cp), = build_rows(cfg, cap, pipe).values()
    assert ce.shape == C.shape and cp.shape == P.shape                 # one row each, '' not kept
    assert torch.allclose(ce.double(), C, atol=1e-5) and torch.allclose(tt.double(), T, atol=1e-5)
    assert torch.allclose(cp.double(), P, atol=1e-5)
    with_empty = build_rows(cfg.replace(preserve_empty=True), cap, pipe)["*"][2]
    assert with_empty.shape[0] == P.shape[0] + 1                       # '' adds its one row

    dn = Denoiser(pipe)
    names = [f"{p}.weight" for p in paths]
    orig = snapshot(dn.module, names)
    res = uce_edit(pipe, cfg, progress=False)
    d = C.shape[1]
    for n in names:
        W = orig[n].double()
        mat1 = lam * W + (W @ T.T) @ C + (W @ P.T) @ P
        mat2 = lam * torch.eye(d, dtype=torch.float64) + C.T @ C + P.T @ P
        ref = (mat1 @ torch.inverse(mat2)).float()
        ours = res.tensors[f"unet.{n}"]
        assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), (n, (ours - ref).abs().max())


def test_preserve_last_locates_the_concept_in_its_template(tiny_pipe):
    """With templates, 'last' keeps the preserved concept's token where the template puts it."""
    from concept_edit.core.tokens import diff_spans, token_positions
    from concept_edit.methods.uce.method import _preserve_positions

    pipe = tiny_pipe("sd1")
    q = "a square on a plain background"
    pos = token_positions(pipe, q, 12)
    ids = pipe.tokenizer(q)["input_ids"]
    sq = pipe.tokenizer("square", add_special_tokens=False)["input_ids"]
    at = next(i for i in range(len(ids)) if ids[i:i + len(sq)] == sq) + len(sq) - 1
    spans = [diff_spans(pipe, q, "a on a plain background", 12)]
    assert _preserve_positions(pos, "last", spans) == [at]
    assert _preserve_positions(pos, "all", spans) == pos.all()
    assert _preserve_positions(token_positions(pipe, "", 12), "last") == [0]     # '' -> BOS


def test_uce_and_esd_configs_parse():
    files = {d: sorted(glob.glob(os.path.join(ROOT, d, "*.yaml"))) for d in ("uce", "esd")}
    assert files["uce"] and files["esd"]
    for path in files["uce"]:
        assert UceConfig.from_yaml(path).edit, path
    for path in files["esd"]:
        assert EsdConfig.from_yaml(path).concept_names(), path
    with pytest.raises(Exception, match="preserve_tokens"):
        UceConfig(edit=["circle"], preserve_tokens="first")


def _checked(argv):
    """The config a CLI command would run with (its ``check`` only: nothing loads)."""
    from concept_edit.cli.main import build_parser

    args = build_parser().parse_args(argv)
    return args.check(args), args


def test_model_recommended_settings_sit_under_the_flags(tmp_path):
    """The embedded toy world ships ESD settings that erase there (concept_edit.json 'methods');
    flags, --set and --config win; a model without them keeps the method's own defaults."""
    import json

    out = str(tmp_path / "e.safetensors")
    cfg, args = _checked(["esd", "--concept", "circle", "--out", out])
    assert (cfg.iterations, cfg.lr, cfg.batch_size, cfg.ddim_steps) == (1200, 1e-3, 4, 25)
    assert args.recommended["iterations"] == 1200
    cfg, args = _checked(["esd", "--concept", "circle", "--steps", "50", "--set", "lr=0.01", "--out", out])
    assert (cfg.iterations, cfg.lr, cfg.batch_size) == (50, 0.01, 4)
    assert "iterations" not in args.recommended and "lr" not in args.recommended
    cfg, args = _checked(["esd", "--config", os.path.join(ROOT, "esd", "toy-circle-x.yaml"), "--iterations",
                          "7", "--out", out])
    assert cfg.iterations == 7 and args.recommended == {}
    bare = tmp_path / "model"
    bare.mkdir()
    (bare / "concept_edit.json").write_text(json.dumps({"size": 64}))
    cfg, args = _checked(["esd", "--model", str(bare), "--concept", "circle", "--out", out])
    assert cfg.iterations == EsdConfig(concepts=["circle"]).iterations and args.recommended == {}


def test_erasure_check_finds_the_erased_values():
    from concept_edit.cli.erasure_check import toy_concepts

    for name, want in (("erase-circle", [("shape", "circle")]), ("erase-red", [("colour", "red")]),
                       ("erase-striped", [("background", "striped")]),
                       ("erase-three", [("shape", "circle"), ("colour", "red"), ("background", "striped")])):
        cfg = UceConfig.from_yaml(os.path.join(ROOT, "uce", name + ".yaml"))
        assert toy_concepts(cfg.edit, cfg.guides()) == want, name
    for name, want in (("toy-circle-keep", [("shape", "circle")]), ("toy-red-keep", [("colour", "red")]),
                       ("toy-striped-keep", [("background", "striped")])):
        cfg = EsdConfig.from_yaml(os.path.join(ROOT, "esd", name + ".yaml"))
        assert toy_concepts(cfg.concept_names()) == want, name
    assert toy_concepts(["circle", "striped"]) == [("shape", "circle"), ("background", "striped")]
    assert toy_concepts(["van gogh"]) == []
