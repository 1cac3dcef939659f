"""Scoped tracing of module inputs (keyword inputs too), outputs and edits (after baukit).

Example::

    >>> from concept_edit.core.trace import Trace, TraceDict
    >>> with Trace(unet, "mid_block.attentions.0.transformer_blocks.0.attn2", retain_input=True) as tr:
    ...     unet(x, t, encoder_hidden_states=text)
    >>> tr.kwargs["encoder_hidden_states"].shape, tr.output.shape
    >>> with TraceDict(unet, paths, edit_output=lambda out, path: out * 0) as td:
    ...     unet(x, t, encoder_hidden_states=text)        # every traced output zeroed

diffusers passes ``encoder_hidden_states`` to attention modules as a keyword, so hooks are
registered ``with_kwargs=True``; ``tr.input`` is the first positional input (or the first
keyword input when called with keywords only) and ``tr.kwargs`` holds every keyword input.
Hooks are removed when the block exits, on exceptions too. ``stop=True`` raises StopForward
after the (last) traced module runs; the context manager swallows it.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from .paths import get_module


class StopForward(Exception):
    """Raised by a Trace with ``stop=True`` to cut the forward pass short."""


def _clone(x, detach: bool, clone: bool):
    if isinstance(x, torch.Tensor):
        if detach:
            x = x.detach()
        return x.clone() if clone else x
    if isinstance(x, (tuple, list)):
        return type(x)(_clone(v, detach, clone) for v in x)
    if isinstance(x, dict):
        return {k: _clone(v, detach, clone) for k, v in x.items()}
    return x


class Trace(contextlib.AbstractContextManager):
    """Trace one module by path: retain input/kwargs/output, edit input or output, stop."""

    def __init__(self, model: nn.Module, path: str = "", retain_output: bool = True,
                 retain_input: bool = False, clone: bool = False, detach: bool = False,
                 edit_output: Callable | None = None, edit_input: Callable | None = None,
                 stop: bool = False):
        self.path = path
        self.module = get_module(model, path)
        self.input = self.output = None
        self.args: tuple = ()
        self.kwargs: dict = {}
        self._handles = []

        def pre(m, args, kwargs):
            if edit_input is not None:
                res = edit_input(args, kwargs, path)
                if res is not None:
                    args, kwargs = res
            if retain_input:
                self.args = _clone(args, detach, clone)
                self.kwargs = _clone(dict(kwargs), detach, clone)
                self.input = self.args[0] if self.args else next(iter(self.kwargs.values()), None)
            return args, kwargs

        def post(m, args, kwargs, output):
            if edit_output is not None:
                output = edit_output(output, path)
            if retain_output:
                self.output = _clone(output, detach, clone)
            if stop:
                raise StopForward()
            return output

        self._handles.append(self.module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(self.module.register_forward_hook(post, with_kwargs=True))

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return exc_type is not None and issubclass(exc_type, StopForward)


class TraceDict(OrderedDict, contextlib.AbstractContextManager):
    """Trace many modules at once: ``td[path]`` is that module's Trace."""

    def __init__(self, model: nn.Module, paths, retain_output: bool = True,
                 retain_input: bool = False, clone: bool = False, detach: bool = False,
                 edit_output: Callable | None = None, edit_input: Callable | None = None,
                 stop: bool = False):
        super().__init__()
        paths = list(paths)
        try:
            for i, p in enumerate(paths):
                self[p] = Trace(model, p, retain_output, retain_input, clone, detach,
                                edit_output, edit_input, stop=stop and i == len(paths) - 1)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for tr in self.values():
            tr.close()

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return exc_type is not None and issubclass(exc_type, StopForward)
