"""Load a pipeline from a hub id, a local diffusers directory or a single-file checkpoint.

Example::

    >>> from concept_edit.core.loading import load, load_pipeline
    >>> model = load()                                       # the embedded toy world: a Model
    >>> pipe = load_pipeline()                               # ... or just its pipeline
    >>> pipe = load_pipeline("stabilityai/stable-diffusion-xl-base-1.0", dtype="fp16", device="cuda")
    >>> pipe = load_pipeline("/models/tiny-sd3")             # a local diffusers directory

``load`` gives the Model handle (backbone, defaults, source); ``load_pipeline`` the pipeline.
Weights load from safetensors only (pickled ``.bin/.ckpt/.pt`` are refused). Offline, a model
that is neither local nor cached is a one-line error naming what to pass instead. Loading is
quiet (no progress bars or library warnings) unless ``quiet=False``.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import warnings

import torch

from .backbones import backbone_of, single_file_class, single_file_family
from .embedded import default_model, source_id
from .model import Model, model_of, read_shipped

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
PICKLE_EXT = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
DEFAULT_MODEL = default_model()


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what to pass instead."""


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of fp32, fp16, bf16")
    return DTYPES[dtype]


def _dtype_kw(dt) -> dict:
    """diffusers >= 0.42 takes ``dtype`` (``torch_dtype`` warns); older ones only ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401

        return {"dtype": dt}
    except ImportError:
        return {"torch_dtype": dt}


@contextlib.contextmanager
def _quiet(on: bool):
    """Library progress bars and warnings off while loading."""
    if not on:
        yield
        return
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dv, tv = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        dlog.set_verbosity(dv)
        tlog.set_verbosity(tv)
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()


def _check_dir(path: str) -> None:
    if not os.path.exists(os.path.join(path, "model_index.json")):
        raise ModelLoadError(f"{path} is not a diffusers pipeline directory (no model_index.json); "
                             "pass a directory saved with save_pretrained, a hub id, or a .safetensors file")
    weights = glob.glob(os.path.join(path, "*", "*"))
    has_safe = any(w.endswith(".safetensors") for w in weights)
    pickled = [w for w in weights if w.endswith(PICKLE_EXT)]
    if pickled and not has_safe:
        raise ModelLoadError(f"{path} holds only pickled weights ({os.path.basename(pickled[0])}); "
                             "concept_edit never unpickles: convert them to safetensors first")


def _single_file(path: str, dt, family: str | None):
    import diffusers
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{path}: not a readable safetensors checkpoint "
                             f"({str(e).splitlines()[0]}); pass a diffusers directory or a .safetensors file") from None
    family = family or single_file_family(keys)
    if family is None:
        raise ModelLoadError(f"cannot tell the family of {path}; pass --family (one of sd1, sd2, "
                             "sdxl, sd3) or a diffusers directory")
    cls = single_file_class(family)
    if cls is None:
        raise ModelLoadError(f"single-file loading is not supported for {family}; pass a diffusers directory")
    try:
        return getattr(diffusers, cls).from_single_file(path, **_dtype_kw(dt))
    except Exception as e:  # diffusers needs the original config (hub or cache)
        raise ModelLoadError(f"could not load {path} as {cls} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                             "offline, convert it to a diffusers directory where the hub is reachable") from e


def _null_components(d: str) -> dict:
    """{name: None} for components saved as null (SD3 without T5): diffusers wants them passed."""
    try:
        with open(os.path.join(d, "model_index.json")) as f:
            index = json.load(f)
    except (OSError, ValueError):
        return {}
    return {k: None for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[0] is None
            and k not in ("feature_extractor", "image_encoder", "safety_checker")}


def load_pipeline_raw(model: str | None = None, dtype="fp32", device: str = "cpu",
                      attention: str = "sdpa", family: str | None = None, progress: bool = False,
                      quiet: bool = True):
    """(pipeline, source id): loaded, eval mode, frozen, progress bars off by default."""
    from diffusers import DiffusionPipeline

    model = model or default_model()
    dt = _dtype(dtype)
    if attention not in ("sdpa", "xformers"):
        raise ModelLoadError(f"unknown attention {attention!r}; choose sdpa or xformers")
    if model.endswith(PICKLE_EXT):
        raise ModelLoadError(f"{model} is a pickled checkpoint; concept_edit never unpickles: "
                             "convert it to .safetensors or a diffusers directory")
    with _quiet(quiet):
        if os.path.isfile(model):
            if not model.endswith(".safetensors"):
                raise ModelLoadError(f"{model}: expected a .safetensors checkpoint or a diffusers directory")
            pipe = _single_file(model, dt, family)
        elif os.path.isdir(model):
            _check_dir(model)
            pipe = DiffusionPipeline.from_pretrained(model, use_safetensors=True, **_null_components(model),
                                                     **_dtype_kw(dt))
        else:
            looks_local = model.startswith((".", "/", "~")) or os.sep in model and model.count("/") != 1
            if looks_local:
                raise ModelLoadError(f"model directory {model!r} does not exist; pass an existing diffusers "
                                     "directory (`concept-edit make-tiny sd1 DIR` builds one) or a hub id")
            try:
                pipe = DiffusionPipeline.from_pretrained(model, use_safetensors=True, **_dtype_kw(dt))
            except Exception as e:
                raise ModelLoadError(
                    f"could not load {model!r} from the hub or its cache ({type(e).__name__}); offline, "
                    f"pass a local diffusers directory, e.g. the embedded default {default_model()}") from e
    backbone_of(pipe)  # unsupported pipelines fail here, once
    pipe.to(device)
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            comp.eval().requires_grad_(False)
    if attention == "xformers":
        try:
            if not torch.cuda.is_available():
                raise RuntimeError("xformers needs CUDA")
            pipe.enable_xformers_memory_efficient_attention()
        except Exception as e:
            warnings.warn(f"xformers attention unavailable ({e}); using PyTorch SDPA", stacklevel=2)
    pipe.set_progress_bar_config(disable=not progress)
    return pipe, source_id(model)


def load(model: str | None = None, dtype="fp32", device: str = "cpu", attention: str = "sdpa",
         family: str | None = None, progress: bool = False, quiet: bool = True) -> Model:
    """Load a hub id, a diffusers directory or a single-file checkpoint into a Model handle."""
    path = model or default_model()
    pipe, source = load_pipeline_raw(path, dtype=dtype, device=device, attention=attention,
                                     family=family, progress=progress, quiet=quiet)
    return model_of(pipe, source=source, shipped=read_shipped(path))


def load_pipeline(model: str | None = None, dtype="fp32", device: str = "cpu",
                  attention: str = "sdpa", family: str | None = None, progress: bool = False,
                  quiet: bool = True):
    """The plain diffusers pipeline; its Model handle is ``model_of(pipe)``."""
    return load(model, dtype=dtype, device=device, attention=attention, family=family,
                progress=progress, quiet=quiet).pipe
