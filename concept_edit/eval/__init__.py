"""Evaluation: toy-world erasure and slider reports."""
