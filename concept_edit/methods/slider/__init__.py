"""Concept Sliders (text and image-pair LoRA sliders).

Example::

    >>> from concept_edit.methods.slider import SliderConfig, train_slider
    >>> res = train_slider(pipe, SliderConfig.from_yaml("configs/sliders/toy-size.yaml"))
    >>> res.save("size.safetensors")
"""
from ...core.plugins import Method

METHOD = Method("slider", "LoRA sliders from prompt sets or image pairs", config="concept_edit.methods.slider.config:SliderConfig",
                run="concept_edit.methods.slider.train:run")

_LAZY = {"SliderConfig": ".config", "PromptSet": ".config", "ImagePairs": ".config",
         "SliderResult": ".train", "slider_target": ".train", "train_slider": ".train"}


def __getattr__(name: str):  # the heavy modules load on first use, not on import
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHOD", *_LAZY]
