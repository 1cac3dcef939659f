"""Sliders: every family trains/saves/loads, scale 0 == base, kohya round trip, errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from concept_edit.core.artifacts import apply_artifact
from concept_edit.core.config import ConfigError
from concept_edit.core.io import ArtifactError, load_safetensors
from concept_edit.core.lora import lora_router
from concept_edit.core.sampling import SampleSettings, generate
from concept_edit.methods.slider import SliderConfig, slider_target, train_slider
from concept_edit.methods.slider.kohya import from_kohya, to_kohya

from conftest import FAMILIES

PROMPTS = [dict(target="a {}", positive="a large {}", unconditional="a small {}", guidance=2.0)]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    for sub in ("low", "high"):
        (root / sub).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / sub / f"{i}.png")
    return str(root)


def _cfg(family, pairs, **kw):
    d = dict(prompts=PROMPTS, preservation=["circle", "square"], iterations=2, bank_size=2,
             ddim_steps=4, lr=1e-2)
    if family != "flux":  # flux's tiny pipeline runs at 32 px; the pairs are 64 px
        d["image_pairs"] = dict(low=f"{pairs}/low", high=f"{pairs}/high", prompt="a shape")
    d.update(kw)
    return SliderConfig.from_dict(d)


def test_target_formula():
    n, p, u = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([2.0])
    assert slider_target(n, p, u, 4.0, "enhance").item() == 5.0
    assert slider_target(n, p, u, 4.0, "erase").item() == -3.0
    # contrast "neutral": towards one end only; the mirrored call (p and u swapped) to the other
    assert slider_target(n, p, u, 2.0, "enhance", "neutral").item() == 5.0
    assert slider_target(n, u, p, 2.0, "enhance", "neutral").item() == 3.0
    assert slider_target(n, p, u, 2.0, "erase", "neutral").item() == 3.0


@pytest.mark.parametrize("family", FAMILIES)
def test_train_save_load_scale0(tiny_pipe, tiny_dirs, family, pairs, tmp_path):
    pipe = tiny_pipe(family)
    s = SampleSettings(prompt="a circle", n=1, seed=1)
    base = generate(pipe, s, progress=False)
    res = train_slider(pipe, _cfg(family, pairs), progress=False)
    assert len(res.losses) == 2
    path = str(tmp_path / "s.safetensors")
    res.save(path)
    res.edit.remove()
    assert np.array_equal(generate(pipe, s, progress=False), base)
    h = apply_artifact(pipe, path, scale=0.0)
    assert np.array_equal(generate(pipe, s, progress=False), base)          # scale 0 == base
    lora_router(pipe).set_scale(h.name, 3.0)
    ours = generate(pipe, s, progress=False)
    assert not np.array_equal(ours, base)
    if family == "pixart":  # no diffusers LoRA API for PixArt: peft injection is our path
        return
    from diffusers import DiffusionPipeline

    plain = DiffusionPipeline.from_pretrained(tiny_dirs(family))
    plain.set_progress_bar_config(disable=True)
    plain.load_lora_weights(path, adapter_name="s")
    plain.set_adapters(["s"], adapter_weights=[3.0])
    from concept_edit.core.sampling import pipe_defaults

    d = pipe_defaults(pipe)
    gen = torch.Generator().manual_seed(1)
    img = plain("a circle", num_inference_steps=d["steps"], guidance_scale=d["guidance"],
                height=d["size"], width=d["size"], generator=gen, output_type="np").images
    theirs = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    assert np.abs(theirs.astype(int) - ours.astype(int)).max() <= 1    # plain diffusers == ours


def test_kohya_round_trip(tiny_pipe, pairs, tmp_path):
    pipe = tiny_pipe("sd1")
    res = train_slider(pipe, _cfg("sd1", pairs, sites="c3lier"), progress=False)
    sd = res.edit.artifact_tensors()
    k = to_kohya(sd)
    assert any(key.startswith("lora_unet_") and key.endswith(".lora_down.weight") for key in k)
    assert any(key.endswith(".alpha") for key in k)
    paths = [n for n, _ in pipe.unet.named_modules()]
    back = from_kohya(k, paths)
    assert set(back) == set(sd) and all(torch.equal(back[x], sd[x]) for x in sd)
    from concept_edit.cli.main import main

    src, dst = str(tmp_path / "s.safetensors"), str(tmp_path / "k.safetensors")
    res.save(src)
    main(["slider", "export", "--kohya", src, dst])
    assert set(load_safetensors(dst)) == set(k)


def test_strict_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'guidance'"):
        SliderConfig.from_dict({"prompts": [dict(PROMPTS[0], guidence=4.0)]})
    with pytest.raises(ConfigError, match="did you mean 'iterations'"):
        SliderConfig.from_dict({"prompts": PROMPTS, "iteration": 5})
    with pytest.raises(ConfigError, match="c3lier"):
        SliderConfig.from_dict({"prompts": PROMPTS, "sites": "attn"})
    cfg = SliderConfig.from_dict({"prompts": PROMPTS})
    assert cfg.prompts[0].guidance == 2.0                 # 'guidance' is honoured, not dropped


def test_refused_on_other_base(tiny_pipe, pairs, tmp_path):
    res = train_slider(tiny_pipe("sd1"), _cfg("sd1", pairs), progress=False)
    path = str(tmp_path / "s.safetensors")
    res.save(path)
    with pytest.raises(ArtifactError):
        apply_artifact(tiny_pipe("sdxl"), path)
    with pytest.raises(ArtifactError):
        apply_artifact(tiny_pipe("sd2"), path)


def test_train_after_start_draws_only_late_steps(tiny_pipe, pairs, monkeypatch):
    """With train_after_start, x_t comes only from steps >= round(start x ddim_steps) and pair
    noise levels stay below the switch-on level; without it, early steps are drawn too."""
    from concept_edit.core import denoise
    from concept_edit.methods.slider import train as slider_train

    steps, fracs = [], []
    take = denoise.Bank.take
    monkeypatch.setattr(denoise.Bank, "take", lambda self, t, s: steps.extend(s) or take(self, t, s))
    noisy = slider_train.noisy_state
    monkeypatch.setattr(slider_train, "noisy_state",
                        lambda dn, tpl, x0, n, frac: fracs.append(frac) or noisy(dn, tpl, x0, n, frac))
    pipe = tiny_pipe("sd1")
    late = dict(ddim_steps=8, start=0.5, train_after_start=True, iterations=6, batch_size=4)
    train_slider(pipe, _cfg("sd1", pairs, image_pairs=None, **late), progress=False).edit.remove()
    assert len(steps) == 24 and min(steps) >= 4
    train_slider(pipe, _cfg("sd1", pairs, prompts=[], **late), progress=False).edit.remove()
    assert len(fracs) == 12 and max(fracs) <= 0.5
    steps.clear()
    train_slider(pipe, _cfg("sd1", pairs, image_pairs=None, **dict(late, train_after_start=False)),
                 progress=False).edit.remove()
    assert min(steps) < 4                                 # the default trains on every step
    assert SliderConfig.from_dict({"prompts": PROMPTS, "start": 0.5, "train_after_start": True,
                                   "train_start": 0.25, "ddim_steps": 8}).first_step() == 2
    steps.clear()
    train_slider(pipe, _cfg("sd1", pairs, image_pairs=None, **dict(late, train_start=0.75)),
                 progress=False)
    assert min(steps) >= 6                                # train_start moves the first step
    with pytest.raises(ConfigError, match="train_start"):
        SliderConfig.from_dict({"prompts": PROMPTS, "train_start": 1.5})
    with pytest.raises(ConfigError, match="lower train_start"):
        SliderConfig.from_dict({"prompts": PROMPTS, "train_after_start": True, "train_start": 1.0})
    with pytest.raises(ConfigError, match="lower start"):
        SliderConfig.from_dict({"prompts": PROMPTS, "start": 1.0, "train_after_start": True})


def test_pair_captions(tiny_pipe, pairs, tmp_path, monkeypatch):
    """captions: true trains each pair under low/NAME.txt; pairs without one use 'prompt'."""
    import shutil

    from concept_edit.methods.slider import train as slider_train

    root = tmp_path / "p"
    shutil.copytree(pairs, root)
    (root / "low" / "1.txt").write_text("a red circle\n")
    used = []
    real = slider_train.CondTable

    class Spy(real):
        def __call__(self, texts):
            used.extend(texts)
            return super().__call__(texts)

    monkeypatch.setattr(slider_train, "CondTable", Spy)
    ip = dict(low=f"{root}/low", high=f"{root}/high", prompt="a shape", captions=True)
    pipe = tiny_pipe("sd1")
    train_slider(pipe, _cfg("sd1", pairs, prompts=[], image_pairs=ip, iterations=4, batch_size=3),
                 progress=False).edit.remove()
    assert set(used) == {"a red circle", "a shape"}
    used.clear()
    train_slider(pipe, _cfg("sd1", pairs, prompts=[], image_pairs=dict(ip, captions=False),
                                        iterations=4, batch_size=3), progress=False).edit.remove()
    assert set(used) == {"a shape"}
    # a caption file of several lines: one caption drawn per step, each line used
    (root / "low" / "1.txt").write_text("a red circle\n\na circle\n")
    (root / "low" / "0.txt").write_text("a blue star\n")
    used.clear()
    train_slider(pipe, _cfg("sd1", pairs, prompts=[], image_pairs=ip, iterations=12, batch_size=3),
                 progress=False).edit.remove()
    assert set(used) == {"a red circle", "a circle", "a blue star", "a shape"}


def test_pair_levels(tiny_pipe, pairs, tmp_path, monkeypatch):
    """image_pairs as a list: each step draws one level and trains at its scale (+s high, -s low;
    with transport, the cross terms too); levels are checked (distinct scales, no scale 0, not empty) and recorded in the metadata."""
    from concept_edit.core.io import read_artifact_meta
    from concept_edit.core.lora import LoraRouter

    lv = dict(low=f"{pairs}/low", high=f"{pairs}/high", prompt="a shape")
    scales = []
    real = LoraRouter.set_scale
    monkeypatch.setattr(LoraRouter, "set_scale", lambda self, n, s: scales.append(s) or real(self, n, s))
    cfg = _cfg("sd1", pairs, prompts=[], image_pairs=[dict(lv, scale=1.0), dict(lv, scale=2.0)],
               iterations=12, transport=1.0)
    res = train_slider(tiny_pipe("sd1"), cfg, progress=False)
    assert {-2.0, -1.0, 1.0, 2.0} <= set(scales) <= {-2.0, -1.0, 1.0, 2.0}
    assert len(scales) > 12 * 3 + 1     # 2 terms + reset per step, plus the cross terms on some
    path = str(tmp_path / "levels.safetensors")
    res.save(path)
    assert [d["scale"] for d in read_artifact_meta(path)["config"]["image_pairs"]] == [1.0, 2.0]
    with pytest.raises(ConfigError, match="distinct scales"):
        SliderConfig.from_dict({"image_pairs": [lv, lv]})
    with pytest.raises(ConfigError, match="scale 0"):
        SliderConfig.from_dict({"image_pairs": dict(lv, scale=0)})
    with pytest.raises(ConfigError, match="empty list"):
        SliderConfig.from_dict({"image_pairs": []})
    with pytest.raises(ConfigError, match=r"image_pairs\[1\]: .*did you mean 'scale'"):
        SliderConfig.from_dict({"image_pairs": [lv, dict(lv, scael=2)]})


@pytest.mark.parametrize("family", ["sd1", "sd2", "sd3"])   # epsilon, v-prediction, flow matching
def test_transport_noise_reads_other_image(tiny_pipe, family):
    """The cross term's state is exactly x_t of the other image (same noise), and its target is
    what a prediction implying x0 = the first image must be."""
    from concept_edit.core.denoise import Denoiser, noisy_state, signal_ratio

    pipe = tiny_pipe(family)
    dn = Denoiser(pipe)
    tpl = dn.capture(["a shape"], steps=1, guidance=1.0, seed=0, height=32, width=32).take([0], [0])
    g = torch.Generator().manual_seed(0)
    lat, other, noise = (torch.randn(2, *dn_latent_shape(pipe), generator=g) for _ in range(3))
    key = dn.family.input_kwarg
    for frac in (0.3, 0.6, 0.9):
        c = signal_ratio(dn, frac)
        moved, target = noisy_state(dn, tpl, lat, noise + c * (other - lat), frac)
        plain, _ = noisy_state(dn, tpl, other, noise, frac)
        assert torch.allclose(moved[key], plain[key], atol=1e-5)
        _, own = noisy_state(dn, tpl, lat, noise, frac)
        assert not torch.allclose(target, own)            # the target asks for the other image
    with pytest.raises(ConfigError, match="transport"):
        SliderConfig.from_dict({"prompts": PROMPTS, "transport": -1})
    with pytest.raises(ConfigError, match="add image_pairs or drop transport"):
        SliderConfig.from_dict({"prompts": PROMPTS, "transport": 1})
    pairs = {"low": "l", "high": "h"}
    with pytest.raises(ConfigError, match="never reaches"):   # noise levels stay below 0.5
        SliderConfig.from_dict({"image_pairs": pairs, "transport": 1, "train_after_start": True,
                                "start": 0.6})
    SliderConfig.from_dict({"image_pairs": pairs, "transport": 1, "train_after_start": True,
                            "start": 0.24})


def dn_latent_shape(pipe):
    c = getattr(pipe, "transformer", None) or pipe.unet
    return (c.config.in_channels, 4, 4)


def test_text_scale_and_bidirectional(tiny_pipe, pairs, monkeypatch):
    """text_scale: the LoRA runs at that scale on the target; bidirectional: also at its negative,
    regressed onto the mirrored target (positive and unconditional swapped)."""
    from concept_edit.core.lora import LoraRouter
    from concept_edit.methods.slider import train as slider_train

    scales, swaps = [], []
    set_scale = LoraRouter.set_scale
    monkeypatch.setattr(LoraRouter, "set_scale", lambda self, n, s: scales.append(s) or set_scale(self, n, s))
    target = slider_train.slider_target
    monkeypatch.setattr(slider_train, "slider_target",
                        lambda n, p, u, g, a, c: swaps.append(bool(torch.equal(p, u))) or target(n, p, u, g, a, c))
    pipe = tiny_pipe("sd1")
    kw = dict(image_pairs=None, preservation=[], iterations=1, batch_size=1, text_scale=2.0)
    res = train_slider(pipe, _cfg("sd1", pairs, **kw), progress=False)
    res.edit.remove()
    assert 2.0 in scales and -2.0 not in scales and len(swaps) == 1
    scales.clear()
    calls = []
    monkeypatch.setattr(slider_train, "slider_target",
                        lambda n, p, u, g, a, c: calls.append((p, u)) or target(n, p, u, g, a, c))
    res = train_slider(pipe, _cfg("sd1", pairs, bidirectional=True, **kw), progress=False)
    res.edit.remove()
    assert 2.0 in scales and -2.0 in scales
    (p0, u0), (p1, u1) = calls
    assert torch.equal(p0, u1) and torch.equal(u0, p1) and not torch.equal(p0, u0)
    assert np.isfinite(res.losses).all()
    with pytest.raises(ConfigError, match="contrast must be"):
        SliderConfig.from_dict({"prompts": PROMPTS, "contrast": "pair"})
    with pytest.raises(ConfigError, match="text_scale 0"):
        SliderConfig.from_dict({"prompts": PROMPTS, "text_scale": 0})


def test_recommended_stop_is_stored_and_honoured(tiny_pipe, pairs, tmp_path):
    """stop: the slider is off again from that fraction of the steps on (file metadata), and a
    slider acting on a window differs from one acting to the end."""
    from concept_edit.core.artifacts import read_artifact_meta
    from concept_edit.core.lora import start_schedule

    f = start_schedule(0.25, 0.75)
    assert [f(i, 8) for i in range(8)] == [0, 0, 1, 1, 1, 1, 0, 0]
    assert [start_schedule(0.25)(i, 8) for i in range(8)] == [0, 0, 1, 1, 1, 1, 1, 1]
    from concept_edit.core.lora import recommended_schedule

    meta = {"lora": {"start": 0.25, "stop": 0.75}}
    assert recommended_schedule({"lora": {"start": 0.0}}) is None
    assert [recommended_schedule(meta, start=0.0)(i, 8) for i in range(8)] == [1, 1, 1, 1, 1, 1, 0, 0]
    assert [recommended_schedule(meta, start=0.8)(i, 8) for i in range(8)] == [0] * 6 + [1, 1]  # past stop
    assert [recommended_schedule({"lora": {"start": 1.0}})(i, 8) for i in range(8)] == [0] * 8  # start 1: off
    pipe = tiny_pipe("sd1")
    s = SampleSettings(prompt="a circle", n=1, seed=1)
    res = train_slider(pipe, _cfg("sd1", pairs, image_pairs=None, start=0.25, stop=0.75), progress=False)
    path = str(tmp_path / "s.safetensors")
    res.save(path)
    res.edit.remove()
    assert read_artifact_meta(path)["lora"]["stop"] == 0.75
    h = apply_artifact(pipe, path, scale=3.0)
    sched = lora_router(pipe).adapters[h.name].schedule
    assert [sched(i, 8) for i in range(8)] == [0, 0, 1, 1, 1, 1, 0, 0]
    window = generate(pipe, s, progress=False)
    lora_router(pipe).set_schedule(h.name, start=0.25)
    assert not np.array_equal(generate(pipe, s, progress=False), window)
    h.remove()
    with pytest.raises(ConfigError, match="stop must be"):
        SliderConfig.from_dict({"prompts": PROMPTS, "start": 0.5, "stop": 0.4})
