"""SliderSpace: discover many slider directions from prompts, without labels.

Example::

    >>> from concept_edit.methods.sliderspace import SliderSpaceConfig, discover
    >>> res = discover(model, SliderSpaceConfig(prompts=["a square"], samples=512, components=8))
    >>> res.artifact.names                  # ['slider_00', ..., 'slider_07'] (rank-1 LoRAs)
    >>> res.save("out/square")              # slider_XX.safetensors, manifest.json, pca.safetensors

Sample N images, embed them (the toy CLIP by default), PCA, then one rank-1 LoRA slider per
principal component (frozen seeded orthonormal up vectors, trainable down vectors), trained so that
the slider moves the image embedding of x0-hat along its component; all K in one run.
"""
from ...core.plugins import Method

METHOD = Method("sliderspace", "unsupervised slider discovery (PCA of image embeddings -> rank-1 LoRAs)",
                config="concept_edit.methods.sliderspace.config:SliderSpaceConfig",
                run="concept_edit.methods.sliderspace.method:run")

_LAZY = {"SliderSpaceConfig": ".config", "SliderSpaceError": ".config", "SliderSpaceResult": ".method",
         "discover": ".method", "run": ".method", "pca": ".pca"}


def __getattr__(name: str):  # the heavy modules load on first use, not on import
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHOD", *_LAZY]
