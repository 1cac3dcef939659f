"""Lazy registries: names without imports, a clean error for unknown names, live objects too;
the Model handle's defaults and source ids."""
import json
import os
import subprocess
import sys

import pytest

from concept_edit.core.plugins import PluginError, Registry


def test_registry_is_lazy_and_strict():
    reg = Registry("thing", {"json": "json:dumps", "bad": "no_such_module_xyz:f"})
    assert reg.names() == ["bad", "json"] and reg.target("json") == "json:dumps"
    assert reg.get("json") is json.dumps
    with pytest.raises(PluginError, match="did you mean 'json'"):
        reg.get("jsno")
    reg.register("live", print)
    assert reg.get("live") is print
    with pytest.raises(PluginError, match="twice"):
        reg.register("json", "json:loads")


def test_registries_resolve_in_a_fresh_process():
    """Methods and scorers are found by name with no other import first (UCE debias from
    Python used to fail with 'unknown scorer')."""
    code = ("import sys\nfrom concept_edit.methods import METHODS\nfrom concept_edit.scorers import SCORERS\n"
            "assert 'torch' not in sys.modules\n"
            "assert {'esd', 'slider', 'uce'} <= set(METHODS.names()) and {'clip', 'toy', 'toy-clip'} <= set(SCORERS.names())\n"
            "for n in METHODS.names():\n    m = METHODS.get(n)\n    assert m.config.__name__.endswith('Config')\n"
            "assert 'torch' not in sys.modules\n"
            "from concept_edit.scorers import get_scorer\n"
            "import numpy as np\nfrom concept_edit.toyworld.render import render, sample_scene\n"
            "img = render(sample_scene(rng=np.random.default_rng(0), colour='red', size='large'))\n"
            "assert get_scorer('toy', ['red', 'blue'])(img[None]) == ['red']\n"
            "assert callable(METHODS.get('uce').run)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]


def test_model_defaults_from_config_and_source_ids(tiny_dirs, tmp_path):
    """No concept_edit.json: the size comes from the model's own config, not the family table;
    sources never hold an absolute path."""
    import shutil

    from concept_edit.core.embedded import EMBEDDED_ID, default_model, source_id
    from concept_edit.core.loading import load

    d = str(tmp_path / "custom-sd")
    shutil.copytree(tiny_dirs("sd1"), d)
    os.remove(os.path.join(d, "concept_edit.json"))
    m = load(d)
    assert m.defaults["size"] == m.pipe.unet.config.sample_size * m.pipe.vae_scale_factor != 512
    assert m.source == "custom-sd" and m.backbone.name == "sd1"
    assert source_id(default_model()) == EMBEDDED_ID
    assert source_id("stabilityai/sdxl-turbo") == "stabilityai/sdxl-turbo"
