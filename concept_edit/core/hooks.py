"""Named hooks that stack and are removed by name.

Example::

    >>> from concept_edit.core.hooks import hooks
    >>> hooks(unet).add("slider:size", "mid_block", output=lambda out, path: out * 1.1)
    >>> hooks(unet).names()
    ['slider:size']
    >>> hooks(unet).remove("slider:size")                 # exact base behaviour again
    >>> with hooks(unet).scoped("probe", "", pre=lambda args, kwargs, path: None):
    ...     unet(x, t, encoder_hidden_states=c)

Hooks registered under several names on one module run in registration order. ``pre`` hooks
receive ``(args, kwargs, path)`` and may return replacements ``(args, kwargs)``; ``output`` hooks
receive ``(output, path)`` and may return a replacement.
"""
from __future__ import annotations

import contextlib
from typing import Callable

from torch import nn

from .paths import get_module

_ATTR = "_concept_edit_hooks"


class HookRegistry:
    def __init__(self, model: nn.Module):
        self.model = model
        self._by_name: dict[str, list] = {}

    def names(self) -> list[str]:
        return list(self._by_name)

    def add(self, name: str, path: str | list[str], output: Callable | None = None,
            pre: Callable | None = None) -> None:
        if name in self._by_name:
            raise ValueError(f"a hook named {name!r} is already registered; remove it first")
        handles = []
        for p in [path] if isinstance(path, str) else list(path):
            m = get_module(self.model, p)
            if pre is not None:
                def _pre(mod, args, kwargs, _p=p):
                    r = pre(args, kwargs, _p)
                    return r
                handles.append(m.register_forward_pre_hook(_pre, with_kwargs=True))
            if output is not None:
                def _post(mod, args, kwargs, out, _p=p):
                    return output(out, _p)
                handles.append(m.register_forward_hook(_post, with_kwargs=True))
        self._by_name[name] = handles

    def remove(self, name: str) -> None:
        if name not in self._by_name:
            raise KeyError(f"no hook named {name!r}; registered: {', '.join(self._by_name) or 'none'}")
        for h in self._by_name.pop(name):
            h.remove()

    def clear(self) -> None:
        for n in list(self._by_name):
            self.remove(n)

    @contextlib.contextmanager
    def scoped(self, name: str, path, output: Callable | None = None, pre: Callable | None = None):
        self.add(name, path, output=output, pre=pre)
        try:
            yield self
        finally:
            self.remove(name)


def hooks(model: nn.Module) -> HookRegistry:
    """The model's hook registry (created on first use)."""
    reg = model.__dict__.get(_ATTR)
    if reg is None:
        reg = HookRegistry(model)
        model.__dict__[_ATTR] = reg
    return reg
