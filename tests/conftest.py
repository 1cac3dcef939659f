import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
torch.set_num_threads(int(os.environ.get("CONCEPT_EDIT_THREADS", min(2, torch.get_num_threads()))))

FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux", "pixart")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "weights", "toy-world")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """family -> directory of a tiny pipeline saved with save_pretrained (built once)."""
    from concept_edit.core.tiny import make_tiny

    root = tmp_path_factory.mktemp("tiny")
    cache = {}

    def get(family):
        if family not in cache:
            d = str(root / family)
            make_tiny(family, d)
            cache[family] = d
        return cache[family]

    return get


@pytest.fixture
def tiny_pipe(tiny_dirs):
    """A fresh pipeline of a family, loaded offline from its saved directory."""
    from concept_edit.core.loading import load_pipeline

    return lambda family: load_pipeline(tiny_dirs(family))


@pytest.fixture(scope="session")
def ctx(tmp_path_factory):
    """The Gradio app launched in-process on the toy world, shared by tests/test_app*.py (see
    tests/app_ctx.py)."""
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    from app_ctx import launch

    yield from launch(tmp_path_factory)
