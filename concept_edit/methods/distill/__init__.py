"""Diversity distillation: the hybrid base -> distilled sampler, x0-hat trajectories, slider transfer.

Example::

    >>> from concept_edit.methods.distill import hybrid_sample, apply_slider
    >>> res = hybrid_sample(base, turbo, ["a circle"] * 8, switch=1, timesteps=[999, 749, 499, 249])
    >>> h = apply_slider(turbo, "size.safetensors", scale=2.0, start_step=1)   # base-trained slider

Not registered in ``METHODS``: this is a sampler and an adapter router over two models, not an
edit that produces an Artifact from one model (``METHODS`` entries take (model, config) and
return an Artifact; nothing here does). The heavy modules load on first use.
"""
_LAZY = {
    "hybrid_sample": ".hybrid", "HybridResult": ".hybrid", "resolve_switch": ".hybrid",
    "map_switch": ".hybrid", "run_schedule": ".hybrid", "check_pair": ".hybrid", "decode_x0": ".hybrid",
    "apply_slider": ".transfer", "apply_to_pair": ".transfer", "lora_sites": ".transfer",
    "check_sites": ".transfer", "trajectories": ".trajectory", "strip_tiles": ".trajectory",
}


def __getattr__(name: str):  # the heavy modules load on first use, not on import
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
