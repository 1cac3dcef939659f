"""ESD: Erasing Concepts from Diffusion Models (fine-tuning).

Example::

    >>> from concept_edit.methods.esd import EsdConfig, train_esd
    >>> res = train_esd(pipe, EsdConfig(concepts=["circle"], variant="x", iterations=200))
    >>> res.save("esd-circle.safetensors")
"""
from ...core.plugins import Method

METHOD = Method("esd", "fine-tune erasure with negative guidance as teacher", config="concept_edit.methods.esd.config:EsdConfig",
                run="concept_edit.methods.esd.train:run")

_LAZY = {"EsdConfig": ".config", "EsdResult": ".train", "esd_target": ".train", "train_esd": ".train"}


def __getattr__(name: str):  # the heavy modules load on first use, not on import
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHOD", *_LAZY]
