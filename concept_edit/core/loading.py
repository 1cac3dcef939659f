"""Load a pipeline from a hub id, a local diffusers directory or a single-file checkpoint.

Example::

    >>> from concept_edit.core.loading import load_pipeline
    >>> pipe = load_pipeline()                               # the embedded toy world
    >>> pipe = load_pipeline("stabilityai/stable-diffusion-xl-base-1.0", dtype="fp16", device="cuda")
    >>> pipe = load_pipeline("/models/tiny-sd3")             # a local diffusers directory

Weights load from safetensors only (pickled ``.bin/.ckpt/.pt`` are refused). Offline, a model
that is neither local nor cached is a one-line error naming what to pass instead.
"""
from __future__ import annotations

import glob
import os
import warnings

import torch

from .families import detect_family, get_family

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MODEL = os.environ.get("CONCEPT_EDIT_MODEL") or os.path.join(_REPO, "weights", "toy-world")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
DEFAULTS_FILE = "concept_edit.json"  # sampler defaults shipped beside a model (size, steps, guidance)
PICKLE_EXT = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what to pass instead."""


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of fp32, fp16, bf16")
    return DTYPES[dtype]


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


def _single_file(path: str, dtype, family: str | None):
    import diffusers
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
    if family is None:
        if any(k.startswith("conditioner.embedders.1") for k in keys):
            family = "sdxl"
        elif any("joint_blocks" in k for k in keys):
            family = "sd3"
        elif any(k.startswith("model.diffusion_model.") for k in keys):
            family = "sd1"
        else:
            raise ModelLoadError(f"cannot tell the family of {path}; pass --family (one of sd1, sd2, "
                                 "sdxl, sd3) or a diffusers directory")
    cls = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
           "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline"}.get(family)
    if cls is None:
        raise ModelLoadError(f"single-file loading is not supported for {family}; pass a diffusers directory")
    try:
        return getattr(diffusers, cls).from_single_file(path, torch_dtype=dtype)
    except Exception as e:  # diffusers needs the original config (hub or cache)
        raise ModelLoadError(f"could not load {path} as {cls} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                             "offline, convert it to a diffusers directory where the hub is reachable") from e


def load_pipeline(model: str | None = None, dtype="fp32", device: str = "cpu",
                  attention: str = "sdpa", family: str | None = None, progress: bool = False):
    """Load and prepare a pipeline (eval mode, frozen, progress bars off by default)."""
    from diffusers import DiffusionPipeline

    model = model or DEFAULT_MODEL
    dt = _dtype(dtype)
    if model.endswith(PICKLE_EXT):
        raise ModelLoadError(f"{model} is a pickled checkpoint; concept_edit never unpickles: "
                             "convert it to .safetensors or a diffusers directory")
    if os.path.isfile(model):
        if not model.endswith(".safetensors"):
            raise ModelLoadError(f"{model}: expected a .safetensors checkpoint or a diffusers directory")
        pipe = _single_file(model, dt, family)
    elif os.path.isdir(model):
        _check_dir(model)
        pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=dt, use_safetensors=True)
    else:
        looks_local = model.startswith((".", "/", "~")) or os.sep in model and model.count("/") != 1
        if looks_local:
            raise ModelLoadError(f"model directory {model!r} does not exist; pass an existing diffusers "
                                 "directory (`concept-edit make-tiny sd1 DIR` builds one) or a hub id")
        try:
            pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=dt, use_safetensors=True)
        except Exception as e:
            raise ModelLoadError(
                f"could not load {model!r} from the hub or its cache ({type(e).__name__}); offline, "
                f"pass a local diffusers directory, e.g. the embedded default {DEFAULT_MODEL}") from e
    fam = detect_family(pipe)
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
    elif attention != "sdpa":
        raise ModelLoadError(f"unknown attention {attention!r}; choose sdpa or xformers")
    pipe.set_progress_bar_config(disable=not progress)
    pipe._concept_edit_source = model
    defaults = os.path.join(model, DEFAULTS_FILE) if os.path.isdir(model) else None
    if defaults and os.path.exists(defaults):
        import json

        with open(defaults) as f:
            pipe._concept_edit_defaults = json.load(f)
    pipe._concept_edit_family = get_family(fam).name
    return pipe
