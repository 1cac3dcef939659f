"""ESD: Erasing Concepts from Diffusion Models (fine-tuning). Registers itself once."""
from ...core.registry import Method, register
from .cli import add_cli
from .config import EsdConfig
from .train import EsdResult, esd_target, train_esd

register(Method("esd", "fine-tune erasure with negative guidance as teacher", EsdConfig, add_cli=add_cli))

__all__ = ["EsdConfig", "EsdResult", "esd_target", "train_esd"]
