"""concept_edit: edit concepts inside text-to-image diffusion models.

Example::

    >>> from concept_edit import load_pipeline, generate, SampleSettings
    >>> pipe = load_pipeline()                                  # the embedded toy world
    >>> images = generate(pipe, SampleSettings(prompt="a red circle", n=4))
"""
__version__ = "0.1.0"

from .core.loading import load_pipeline  # noqa: E402
from .core.sampling import SampleSettings, generate  # noqa: E402

__all__ = ["load_pipeline", "generate", "SampleSettings", "__version__"]
