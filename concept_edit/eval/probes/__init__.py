"""Audit probes by name (lazy: a probe's module is imported when its name is asked for).

Example::

    >>> from concept_edit.eval.probes import PROBES, ORDER
    >>> PROBES.names()
    ['alternatives', 'attack', 'completion', 'guidance', 'inpaint', 'interference', 'inversion', ...]
    >>> probe = PROBES.get("noise")
    >>> cfg = probe.make_config("quick", {"etas": [1.0, 1.85]})     # a StrictConfig
    >>> PROBES.register("mine", my_probe)                            # a Probe object from Python

Each probe module holds one ``PROBE`` (``_base.Probe``: name, help, config class, quick/full
budgets, run function, swept settings). See docs/audit.md for what each one does and costs.
"""
from __future__ import annotations

from ...core.plugins import Registry

ORDER = ("standard", "alternatives", "interference", "inpaint", "completion", "noise", "guidance",
         "ringabell", "inversion", "attack")

PROBES = Registry("probe", {name: f"concept_edit.eval.probes.{name}:PROBE" for name in ORDER})
