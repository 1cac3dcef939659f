"""Issue 19's bars on the trained toy MMDiT (heavy: ~30 min on 2 CPU cores; ``pytest -m heavy``).

The same protocols as docs/families.md with fewer seeds (32 per prompt): UCE erases circle,
ESD-x erases circle, the text size slider moves size and keeps the rest.
"""
import os

import pytest

pytestmark = [pytest.mark.heavy, pytest.mark.timeout(3600)]
MMDIT = "weights/toy-mmdit"
SEEDS = 32


@pytest.fixture(scope="module")
def mm():
    from concept_edit.core.loading import load_pipeline

    return load_pipeline(MMDIT)


def _erasure(mm, path):
    from concept_edit.eval.toy import erasure_report

    rep = erasure_report(mm, {"shape": "circle"}, edit=path, seeds=SEEDS, n_target=2, n_other=4, n_retain=0)
    return rep["target"]["edited"], rep["others"]["keep_ratio"]


def test_uce_erases_circle_on_the_mmdit(mm, tmp_path):
    from concept_edit.methods.uce import UceConfig, uce_edit

    path = str(tmp_path / "uce.safetensors")
    uce_edit(mm, UceConfig.from_yaml("configs/uce/mmdit-erase-circle.yaml"), progress=False).save(path)
    shown, keep = _erasure(mm, path)
    assert shown <= 0.10 and keep >= 0.90, (shown, keep)


def test_esd_x_erases_circle_on_the_mmdit(mm, tmp_path):
    from concept_edit.methods.esd import EsdConfig, train_esd

    path = str(tmp_path / "esd.safetensors")
    res = train_esd(mm, EsdConfig.from_yaml("configs/esd/mmdit-circle-x.yaml"), progress=False)
    res.save(path)
    res.edit.remove()
    shown, keep = _erasure(mm, path)
    assert shown <= 0.15 and keep >= 0.85, (shown, keep)


@pytest.mark.xfail(strict=False, reason="issue 19, open: configs/sliders/mmdit-size.yaml sits on the bar "
                   "(ratio 1.4998, rest kept 0.906 at 64 seeds; docs/sliders.md); 32 seeds fall either side")
def test_size_slider_on_the_mmdit(mm, tmp_path):
    from concept_edit.eval.toy import SLIDER_PROMPTS, slider_report
    from concept_edit.methods.slider import SliderConfig, train_slider

    path = str(tmp_path / "size.safetensors")
    res = train_slider(mm, SliderConfig.from_yaml("configs/sliders/mmdit-size.yaml"), progress=False)
    res.save(path)
    res.edit.remove()
    rep = slider_report(mm, path, seeds=SEEDS, prompts=SLIDER_PROMPTS[::2], scales=(-2, 0, 2))
    assert os.path.exists(path) and rep["ratio_hi_lo"] >= 1.5 and rep["worst_same_as_scale0"] >= 0.90, rep
