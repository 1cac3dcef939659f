"""Unified Concept Editing (closed form): erase, moderate, debias.

Example::

    >>> from concept_edit.methods.uce import UceConfig, uce_edit
    >>> res = uce_edit(pipe, UceConfig(edit=["circle"]))
    >>> res.save("erase-circle.safetensors")
"""
from ...core.plugins import Method

METHOD = Method("uce", "closed-form edits of the layers that read text", config="concept_edit.methods.uce.config:UceConfig",
                run="concept_edit.methods.uce.method:run")

_LAZY = {"UceConfig": ".config", "UceResult": ".method", "uce_edit": ".method"}


def __getattr__(name: str):  # the heavy modules load on first use, not on import
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHOD", *_LAZY]
