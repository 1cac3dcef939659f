"""Every shipped YAML config parses with its method's strict config class."""
import glob
import os

import pytest

from concept_edit.methods.esd import EsdConfig
from concept_edit.methods.slider import SliderConfig
from concept_edit.eval.audit import AuditConcept
from concept_edit.methods.uce import UceConfig
from concept_edit.toyworld.config import ToyTrainConfig

ROOT = os.path.join(os.path.dirname(__file__), "..", "configs")
CLASSES = {"esd": EsdConfig, "sliders": SliderConfig, "uce": UceConfig, "audit": AuditConcept,
           "toyworld": ToyTrainConfig}
FILES = sorted(glob.glob(os.path.join(ROOT, "*", "*.yaml")))


def test_every_config_dir_has_a_class():
    assert FILES and {os.path.basename(os.path.dirname(f)) for f in FILES} <= set(CLASSES)


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(f, ROOT) for f in FILES])
def test_config_parses(path):
    cfg = CLASSES[os.path.basename(os.path.dirname(path))].from_yaml(path)
    assert cfg.to_dict()
