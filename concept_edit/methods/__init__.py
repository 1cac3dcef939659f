"""Method plug-ins, by name, imported only when used (no import side effects).

Example::

    >>> from concept_edit.methods import METHODS
    >>> METHODS.names()
    ['esd', 'slider', 'sliderspace', 'uce']
    >>> m = METHODS.get("uce")              # imports concept_edit.methods.uce (light) only now
    >>> cfg = m.config(edit=["circle"])
    >>> art = m.run(model, cfg)             # -> Artifact

Methods import ``concept_edit.core`` (and ``concept_edit.scorers``) only, never each other.
"""
from ..core.plugins import Registry

METHODS = Registry("method", {
    "uce": "concept_edit.methods.uce:METHOD",
    "esd": "concept_edit.methods.esd:METHOD",
    "slider": "concept_edit.methods.slider:METHOD",
    "sliderspace": "concept_edit.methods.sliderspace:METHOD",
})
