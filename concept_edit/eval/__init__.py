"""Evaluation layer: scorers, toy-world erasure/slider metrics, audits. Reads artifacts via core."""
from . import clip_scorer  # noqa: F401  (registers the 'clip' scorer)
