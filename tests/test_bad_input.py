"""Property-based bad input: the config parser and the artifact loader give a one-line error
(ConfigError / ArtifactError) or a clean result, never another exception or a partial file."""
import json
import os
import struct

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from concept_edit.core.config import ConfigError
from concept_edit.core.io import ArtifactError, read_artifact_meta
from concept_edit.methods.esd.config import EsdConfig
from concept_edit.methods.slider.config import SliderConfig
from concept_edit.methods.uce.config import UceConfig

CONFIGS = (UceConfig, EsdConfig, SliderConfig)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
                    st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=6)


def _keys(cls):
    return st.sampled_from(cls.keys() + ["lrr", "sites ", "Edit", ""])


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_config_parser_one_line_error_or_config(cls, data):
    d = data.draw(st.dictionaries(_keys(cls), values, max_size=4))
    try:
        cfg = cls.from_dict(d)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(cfg, cls)


@settings(max_examples=80, deadline=None)
@given(text=st.text(max_size=60))
@example(text="?")  # {None: None}: a non-name key once crashed difflib (fresh-clone run, tenth session)
@example(text="1: 2")
def test_yaml_text_one_line_error_or_config(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("y") / "c.yaml"
    p.write_text(text)
    try:
        UceConfig.from_yaml(str(p))
    except ConfigError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("key", [None, 1, 2.5, True])
def test_a_key_that_is_not_a_name_is_one_line(key):
    with pytest.raises(ConfigError, match="not a name"):
        UceConfig.from_dict({key: 1})


def _artifact(tmp, tensors, meta):
    path = str(tmp / "a.safetensors")
    save_file(tensors, path, metadata=meta)
    return path


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=64))
def test_random_bytes_are_refused(tmp_path_factory, raw):
    p = tmp_path_factory.mktemp("b") / "x.safetensors"
    p.write_bytes(raw)
    with pytest.raises(ArtifactError):
        read_artifact_meta(str(p))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 2 ** 40), body=st.binary(max_size=40))
def test_handcrafted_headers_are_refused(tmp_path_factory, n, body):
    p = tmp_path_factory.mktemp("h") / "x.safetensors"
    p.write_bytes(struct.pack("<Q", n) + body)
    with pytest.raises(ArtifactError):
        read_artifact_meta(str(p))


def test_damaged_artifacts_one_line(tiny_pipe, tmp_path):
    """Truncated files, wrong dtypes and shapes, NaN tensors, junk metadata: ArtifactError each,
    and the model is unchanged afterwards."""
    from concept_edit.core.artifacts import apply_artifact
    from concept_edit.core.weights import snapshot
    from concept_edit.methods.uce import UceConfig, uce_edit

    pipe = tiny_pipe("sd1")
    good = str(tmp_path / "good.safetensors")
    uce_edit(pipe, UceConfig(edit=["circle"])).save(good)
    from safetensors.torch import load_file
    from safetensors import safe_open

    sd = load_file(good)
    with safe_open(good, "pt") as f:
        meta = f.metadata()
    key = next(iter(sd))
    before = snapshot(pipe.unet, [key.split(".", 1)[1]])
    cases = {
        "truncated": open(good, "rb").read()[:-100],
        "nan": {**sd, key: torch.full_like(sd[key], float("nan"))},
        "int": {**sd, key: sd[key].to(torch.int32)},
        "shape": {**sd, key: sd[key][:, :3].contiguous()},
        "junk-meta": (sd, {"concept_edit": "not json"}),
        "no-meta": (sd, {}),
        "list-meta": (sd, {"concept_edit": json.dumps([1, 2])}),
        "no-base": (sd, {"concept_edit": json.dumps({"kind": "weights"})}),
        "other-kind": (sd, {"concept_edit": json.dumps({"kind": "nope", "base": {"family": "sd1"}})}),
    }
    for name, case in cases.items():
        path = str(tmp_path / f"{name}.safetensors")
        if isinstance(case, bytes):
            open(path, "wb").write(case)
        elif isinstance(case, tuple):
            save_file(case[0], path, metadata=case[1])
        else:
            save_file(case, path, metadata=meta)
        with pytest.raises(ArtifactError) as e:
            apply_artifact(pipe, path)
        assert "\n" not in str(e.value), name
        after = snapshot(pipe.unet, list(before))
        assert all(torch.equal(before[k], after[k]) for k in before), name
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_pickle_sniffing_never_refuses_a_real_header_starting_with_0x80(tmp_path):
    """A safetensors header length can start with byte 0x80, as a pickle does (1 file in ~32):
    every check reads the header first and sniffs for a pickle only when there is none."""
    import sys

    from concept_edit.cli.common import UsageError, check_safetensors
    from concept_edit.core.io import load_safetensors

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from app_engine import AppError, check_safetensors_header

    good = str(tmp_path / "good.safetensors")
    for pad in range(300):
        save_file({"w": torch.zeros(2)}, good, metadata={"pad": "x" * pad})
        if open(good, "rb").read(1) == b"\x80":
            break
    assert open(good, "rb").read(1) == b"\x80"
    check_safetensors(good, "f")
    assert load_safetensors(good)["w"].shape == (2,)
    with pytest.raises(AppError, match="no concept_edit metadata"):  # past the header: not ours
        check_safetensors_header(good, "f")
    old = str(tmp_path / "old.safetensors")  # a protocol-2 pickle: 0x80 0x02 ...
    torch.save({"w": torch.zeros(2)}, old, _use_new_zipfile_serialization=False)
    assert open(old, "rb").read(1) == b"\x80"
    for check, err in ((lambda p: check_safetensors(p, "f"), UsageError), (load_safetensors, ArtifactError),
                       (lambda p: check_safetensors_header(p, "f"), AppError)):
        with pytest.raises(err, match="pickled"):
            check(old)
