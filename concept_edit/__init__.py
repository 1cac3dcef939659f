"""concept_edit: edit concepts inside text-to-image diffusion models.

Example::

    >>> from concept_edit import load, generate, SampleSettings
    >>> model = load()                                          # the embedded toy world
    >>> images = generate(model.pipe, SampleSettings(prompt="a red circle", n=4))

Importing the package is light: torch and diffusers load with the first function that needs them.
"""
__version__ = "0.2.0"

_LAZY = {
    "load": "concept_edit.core.loading",
    "model_of": "concept_edit.core.model",
    "Model": "concept_edit.core.model",
    "load_pipeline": "concept_edit.core.loading",
    "generate": "concept_edit.core.sampling",
    "SampleSettings": "concept_edit.core.sampling",
    "METHODS": "concept_edit.methods",
    "SCORERS": "concept_edit.scorers",
    "get_scorer": "concept_edit.scorers",
    "apply_artifact": "concept_edit.core.artifacts",
    "read_artifact_meta": "concept_edit.core.io",
    "ArtifactError": "concept_edit.core.io",
    "labelled_grid": "concept_edit.eval.grid",
    "sample": "concept_edit.core.sampler",
    "train_slider": "concept_edit.methods.slider",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'concept_edit' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
