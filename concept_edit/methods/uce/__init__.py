"""Unified Concept Editing (closed form): erase, moderate, debias. Registers itself once."""
from ...core.registry import Method, register
from .cli import add_cli
from .config import UceConfig
from .method import UceResult, uce_edit

register(Method("uce", "closed-form edits of the layers that read text", UceConfig, add_cli=add_cli))

__all__ = ["UceConfig", "UceResult", "uce_edit"]
