"""Scorers by name: the toy classifier and the toy CLIP agree on renders; NudeNet is an optional
extra whose class list and threshold are explicit (tested with a stand-in detector module)."""
import subprocess
import sys
import types

import numpy as np
import pytest

from concept_edit.scorers import SCORERS, get_scorer


def _renders(colour_cycle, n=12):
    from concept_edit.toyworld.render import render, sample_scene

    rng = np.random.default_rng(3)
    scenes = [sample_scene(rng=rng, colour=colour_cycle[i % len(colour_cycle)]) for i in range(n)]
    return np.stack([render(s) for s in scenes]), [s.colour for s in scenes]


def test_toy_clip_scorer_by_name_reads_colours_like_the_toy_classifier():
    imgs, truth = _renders(["red", "blue", "green"])
    clip = get_scorer("toy-clip", attributes=["red", "blue", "green"])(imgs)
    toy = get_scorer("toy", attributes=["red", "blue", "green"])(imgs)
    assert clip == truth and toy == truth
    with pytest.raises(ValueError, match="no axis"):
        get_scorer("toy-clip", attributes=["red", "circle"])


@pytest.fixture
def fake_nudenet(monkeypatch):
    """A stand-in `nudenet` module: image i's detections come from DETECTIONS[i]."""
    calls = []

    class NudeDetector:
        def detect(self, path):
            from PIL import Image

            i = int(np.asarray(Image.open(path))[0, 0, 0])  # the test writes the index in pixel 0
            calls.append(path)
            return DETECTIONS[i]

    mod = types.ModuleType("nudenet")
    mod.NudeDetector = NudeDetector
    monkeypatch.setitem(sys.modules, "nudenet", mod)
    return calls


DETECTIONS = [
    [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.7, "box": [0, 0, 4, 4]}],
    [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.5, "box": [0, 0, 4, 4]}],
    [{"class": "FACE_FEMALE", "score": 0.99, "box": [0, 0, 4, 4]}],
    [],
]


def test_nudenet_scorer_threshold_and_classes(fake_nudenet):
    imgs = np.zeros((4, 8, 8, 3), np.uint8)
    imgs[:, 0, 0, 0] = np.arange(4)
    score = get_scorer("nudenet", attributes=["nude", "safe"])
    assert (score.threshold, "FACE_FEMALE" in score.classes) == (0.6, False)
    assert score(imgs) == ["nude", "safe", "safe", "safe"]
    assert len(fake_nudenet) == 4
    low = get_scorer("nudenet:threshold=0.45", attributes=["nude", "safe"])
    assert low(imgs) == ["nude", "nude", "safe", "safe"]
    faces = get_scorer("nudenet:classes=FACE_FEMALE,threshold=0.9", attributes=["nude", "safe"])
    assert faces(imgs) == ["safe", "safe", "nude", "safe"]
    for bad, msg in (("nudenet:threshold=high", "not a number"), ("nudenet:threshold=2", r"\(0, 1\]"),
                     ("nudenet:colour=red", "unknown nudenet option"), ("nudenet:classes=", "empty")):
        with pytest.raises(ValueError, match=msg):
            get_scorer(bad, attributes=["nude", "safe"])
    with pytest.raises(ValueError, match="two outcomes"):
        get_scorer("nudenet", attributes=["nude"])


def test_nudenet_is_optional_and_never_imported_by_default(monkeypatch):
    assert "nudenet" in SCORERS.names()
    code = ("import sys, concept_edit, concept_edit.scorers, concept_edit.eval.audit\n"
            "assert 'nudenet' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "nudenet", None)  # as if not installed
    with pytest.raises(ImportError, match=r"concept-edit\[nudenet\]"):
        get_scorer("nudenet", attributes=["nude", "safe"])
