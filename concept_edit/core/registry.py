"""Method registry: each method package registers itself once; the CLI and app read it.

Example::

    >>> from concept_edit.core.registry import register, get_method
    >>> register(Method("uce", "closed-form erase/debias", UceConfig, add_cli=add_cli))
    >>> get_method("uce").config
"""
from __future__ import annotations

import dataclasses
from typing import Callable

_METHODS: dict[str, "Method"] = {}


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    help: str
    config: type
    add_cli: Callable | None = None   # add_cli(subparsers) -> adds the method's sub-command
    families: tuple[str, ...] = ("sd1", "sd2", "sdxl", "sd3", "flux", "pixart")


def register(method: Method) -> Method:
    if method.name in _METHODS and _METHODS[method.name] is not method:
        raise ValueError(f"method {method.name!r} is registered twice")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; have: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def methods() -> dict[str, Method]:
    return dict(_METHODS)


# -- attribute scorers (pluggable: the toy classifier, open_clip zero-shot, ...) -------------
_SCORERS: dict[str, Callable] = {}


def register_scorer(name: str, factory: Callable) -> None:
    """``factory(spec, attributes) -> scorer``; ``scorer(images uint8 NHWC) -> labels``."""
    _SCORERS[name] = factory


def get_scorer(spec: str, attributes: list[str]):
    """``'toy'`` or ``'clip:ARCH@WEIGHTS'`` -> a scorer over ``attributes``."""
    name = spec.split(":", 1)[0]
    if name not in _SCORERS:
        raise ValueError(f"unknown scorer {spec!r}; have: {', '.join(sorted(_SCORERS)) or 'none'} "
                         "(the CLI registers 'toy' and 'clip')")
    return _SCORERS[name](spec, attributes)
