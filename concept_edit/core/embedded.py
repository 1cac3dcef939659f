"""Where the embedded toy world lives: a checkout's weights/, or the installed package's share/.

Example::

    >>> from concept_edit.core.embedded import embedded_path, default_model
    >>> default_model()                       # $CONCEPT_EDIT_MODEL, else weights/toy-world
    '/.../weights/toy-world'
    >>> embedded_path("toy-classifier")
"""
from __future__ import annotations

import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMBEDDED_ID = "concept_edit:toy-world"
# every embedded generator draws the toy world, so the toy classifier scores all three
TOY_MODELS = (EMBEDDED_ID, "concept_edit:toy-mmdit", "concept_edit:toy-turbo")


def _roots() -> list[str]:
    roots = [os.environ.get("CONCEPT_EDIT_WEIGHTS"), os.path.join(_REPO, "weights"),
             os.path.join(sys.prefix, "share", "concept_edit", "weights")]
    return [r for r in roots if r]


def embedded_path(name: str) -> str:
    """weights/NAME from the first place that has it (checkout, then the installed wheel's data)."""
    for root in _roots():
        p = os.path.join(root, name)
        if os.path.exists(p):
            return p
    return os.path.join(_roots()[0], name)


def default_model() -> str:
    return os.environ.get("CONCEPT_EDIT_MODEL") or embedded_path("toy-world")


def source_id(model: str) -> str:
    """What identifies a model in artifacts and manifests without the author's local paths:
    the hub id as given, ``concept_edit:NAME`` for the embedded models, else the directory or
    file name (the tensor fingerprint beside it identifies the weights)."""
    if not os.path.exists(model):
        return model  # a hub id
    real = os.path.realpath(model)
    for root in _roots():
        r = os.path.realpath(root)
        if real.startswith(r + os.sep):
            return "concept_edit:" + os.path.relpath(real, r)
    return os.path.basename(real.rstrip(os.sep))
