"""Concept Sliders (text and image-pair LoRA sliders). Registers itself once."""
from ...core.registry import Method, register
from .cli import add_cli
from .config import ImagePairs, PromptSet, SliderConfig
from .train import SliderResult, slider_target, train_slider

register(Method("slider", "LoRA sliders from prompt sets or image pairs", SliderConfig, add_cli=add_cli))

__all__ = ["SliderConfig", "PromptSet", "ImagePairs", "SliderResult", "slider_target", "train_slider"]
