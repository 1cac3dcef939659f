"""Shared fine-tuning pieces: trainable edits (LoRA or direct), checkpoints, optimisers.

Example::

    >>> from concept_edit.core.training import EditParams, Checkpointer, make_optimizer
    >>> ep = EditParams(pipe, resolve_sites(pipe, "xattn"), mode="lora", rank=4, alpha=1.0, name="esd")
    >>> opt = make_optimizer("adam", ep.parameters(), lr=1e-4)
    >>> with ep.off():                  # the frozen model: the same network, edit switched off
    ...     target = dn.predict(state, cond)
    >>> ep.artifact_tensors()           # LoRA keys (diffusers format) or changed weights

Trainable tensors and optimiser state are fp32 even when the model runs in bf16/fp16 (direct
mode keeps fp32 master weights and copies them into the model after each step). The loop around
these pieces (accelerate, resume, progress, Ctrl-C) is :class:`concept_edit.core.trainloop.TrainLoop`.
"""
from __future__ import annotations

import contextlib
import os

import torch

from .families import detect_family, get_family
from .io import atomic_path, atomic_save_file, load_safetensors
from .lora import lora_router
from .paths import get_parameter
from .weights import assign, snapshot


class EditParams:
    MODES = ("lora", "direct")

    def __init__(self, pipe, paths: list[str], mode: str = "lora", rank: int = 4, alpha: float = 1.0,
                 name: str = "edit", conv_rank: int | None = None, train: str = "AB", seed: int = 0):
        if mode not in self.MODES:
            raise ValueError(f"training mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        if not paths:
            raise ValueError("the chosen variant/site group selects no parameters in this model")
        self.pipe, self.mode, self.name, self.paths = pipe, mode, name, list(paths)
        self.family = get_family(detect_family(pipe))
        self.module = getattr(pipe, self.family.denoiser)
        self.rank, self.alpha = rank, alpha
        if mode == "lora":
            self.router = lora_router(pipe)
            with torch.random.fork_rng(devices=[]):  # LoRA init from the run's seed: reproducible
                torch.manual_seed(seed)
                self.router.add(name, self.paths, rank=rank, alpha=alpha, conv_rank=conv_rank)
            for p in self.router.parameters(name):
                p.data = p.data.float()
            frozen = {"AB": "", "A": "B", "B": "A"}[train]
            for p in self.router.parameters(name, frozen) if frozen else []:
                p.requires_grad_(False)
            self._params = [p for p in self.router.parameters(name) if p.requires_grad]
        else:
            keys = []
            for path in self.paths:
                mod = self.module.get_submodule(path)
                mod = getattr(mod, "base_layer", mod)  # a peft wrapper keeps the original inside
                for n, _ in mod.named_parameters(recurse=False):
                    keys.append(f"{path}.{n}")
            self.keys = keys
            self.original = snapshot(self.module, keys)
            self.master = {k: v.detach().float().clone().requires_grad_(True) for k, v in self.original.items()}
            self._params = list(self.master.values())
            self._model_params = {k: get_parameter(self.module, k) for k in keys}
            self._fp32 = all(p.dtype == torch.float32 for p in self._model_params.values())
            if self._fp32:  # train the model's own tensors: the masters *are* the parameters
                for k, p in self._model_params.items():
                    p.requires_grad_(True)
                self._params = list(self._model_params.values())
                self.master = dict(self._model_params)

    def parameters(self) -> list[torch.Tensor]:
        return self._params

    def grad_tensors(self) -> list[torch.nn.Parameter]:
        """The model's own tensors that backward writes grads into (LoRA factors, or the direct
        weights; for a low-precision model these are not the fp32 masters): what a data-parallel
        wrapper must sync. Call after ``prepare_model_params``."""
        if self.mode == "direct" and not self._fp32:
            return list(self._model_params.values())
        return list(self._params)

    def n_params(self) -> int:
        return sum(p.numel() for p in self._params)

    @contextlib.contextmanager
    def off(self):
        """Forward passes inside see the base model exactly."""
        if self.mode == "lora":
            with self.router.disabled():
                yield
        else:
            trained = {k: p.detach().clone() for k, p in self._model_params.items()}
            assign(self.module, self.original)
            try:
                yield
            finally:
                assign(self.module, trained)

    def after_backward(self) -> None:
        """Direct mode with a low-precision model: move grads onto the fp32 masters."""
        if self.mode == "direct" and not self._fp32:
            for k, p in self._model_params.items():
                g = p.grad
                self.master[k].grad = None if g is None else g.float()
                p.grad = None

    def after_step(self) -> None:
        if self.mode == "direct" and not self._fp32:
            assign(self.module, {k: v.detach() for k, v in self.master.items()})

    def prepare_model_params(self) -> None:
        if self.mode == "direct" and not self._fp32:
            for p in self._model_params.values():
                p.requires_grad_(True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable tensors for checkpoints."""
        if self.mode == "lora":
            return {f"lora.{i}": p.detach() for i, p in enumerate(self.router.parameters(self.name))}
        return {k: v.detach() for k, v in self.master.items()}

    @torch.no_grad()
    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        if self.mode == "lora":
            for i, p in enumerate(self.router.parameters(self.name)):
                p.copy_(sd[f"lora.{i}"])
        else:
            for k, v in sd.items():
                self.master[k].copy_(v)
            assign(self.module, {k: v for k, v in sd.items()})

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        comp = self.family.denoiser
        if self.mode == "lora":
            return self.router.state_dict(self.name, comp)
        return {f"{comp}.{k}": v.detach().float() for k, v in self.master.items()}

    def originals(self) -> dict[str, torch.Tensor]:
        """Base tensors under artifact keys (direct mode), for the artifact's base fingerprint."""
        if self.mode == "lora":
            return {}
        return {f"{self.family.denoiser}.{k}": v for k, v in self.original.items()}

    def remove(self) -> None:
        """Undo: drop the adapter, or restore the original weights."""
        if self.mode == "lora":
            self.router.remove(self.name)
        else:
            assign(self.module, self.original)
            for p in self._model_params.values():
                p.requires_grad_(False)


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0):
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose adam, adamw or sgd")


class Checkpointer:
    """``DIR/state.safetensors`` (trainables) + ``DIR/optim.pt`` (weights_only) + step."""

    def __init__(self, directory: str | None):
        self.dir = directory

    def exists(self) -> bool:
        return bool(self.dir) and os.path.exists(os.path.join(self.dir, "optim.pt"))

    def save(self, step: int, edit: EditParams, opt, extra: dict | None = None) -> None:
        if not self.dir:
            return
        os.makedirs(self.dir, exist_ok=True)
        atomic_save_file(edit.state_dict(), os.path.join(self.dir, "state.safetensors"),
                         metadata={"step": str(step)})
        with atomic_path(os.path.join(self.dir, "optim.pt")) as tmp:
            torch.save({"step": step, "opt": opt.state_dict(), "extra": extra or {}}, tmp)

    def clear(self) -> None:
        """Drop the checkpoint (a finished run needs no resume): only the files written here, then
        the directory if that leaves it empty."""
        if not self.dir or not os.path.isdir(self.dir):
            return
        for name in os.listdir(self.dir):
            if name in ("state.safetensors", "optim.pt") or name.startswith(".tmp-"):
                os.remove(os.path.join(self.dir, name))
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)

    def load(self, edit: EditParams, opt) -> tuple[int, dict]:
        st = torch.load(os.path.join(self.dir, "optim.pt"), weights_only=True)
        edit.load_state_dict(load_safetensors(os.path.join(self.dir, "state.safetensors")))
        opt.load_state_dict(st["opt"])
        return int(st["step"]), st.get("extra", {})


def step_generator(seed: int, step: int, stream: int = 0, device="cpu") -> torch.Generator:
    """Randomness of one training step from (seed, step): resumed runs see the same draws."""
    return torch.Generator(device).manual_seed((seed * 1_000_003 + step * 7_919 + stream) % (2 ** 63))


@contextlib.contextmanager
def activation_checkpointing(module, on: bool = True):
    """Recompute the denoiser's block activations in backward (diffusers' gradient
    checkpointing) for the block: less memory per training step for ~30% more compute."""
    if not on or not getattr(module, "_supports_gradient_checkpointing", False):
        yield
        return
    was = any(getattr(m, "gradient_checkpointing", False) for m in module.modules())
    module.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if not was:
            module.disable_gradient_checkpointing()
