"""Lazy registries: name -> "module:attr", imported only when asked for (no import side effects).

Example::

    >>> from concept_edit.core.plugins import Registry
    >>> reg = Registry("scorer", {"toy": "concept_edit.scorers.toy:make_scorer"})
    >>> reg.names()
    ['toy']
    >>> factory = reg.get("toy")            # imports concept_edit.scorers.toy now, not before
    >>> reg.register("mine", my_factory)    # a live object works too (Python users' plug-ins)

Third-party packages can add entries through the ``concept_edit.<kind>s`` entry-point group
(``[project.entry-points."concept_edit.methods"] mymethod = "pkg.mod:METHOD"``).
"""
from __future__ import annotations

import difflib
import importlib


class PluginError(ValueError):
    """An unknown or broken plug-in name; the message lists the known ones."""


class Registry:
    def __init__(self, kind: str, entries: dict | None = None):
        self.kind = kind
        self._entries: dict[str, object] = dict(entries or {})
        self._loaded: dict[str, object] = {}
        self._entry_points_read = False

    def _read_entry_points(self) -> None:
        if self._entry_points_read:
            return
        self._entry_points_read = True
        try:
            from importlib.metadata import entry_points

            for ep in entry_points(group=f"concept_edit.{self.kind}s"):
                self._entries.setdefault(ep.name, ep.value)
        except Exception:  # pragma: no cover - broken metadata must not break the built-ins
            pass

    def register(self, name: str, target) -> None:
        """``target``: "module:attr" (lazy) or the object itself. Re-registering a name with a
        different target is an error (a method registers itself once)."""
        old = self._entries.get(name)
        if old is not None and old != target and self._loaded.get(name) is not target:
            raise PluginError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = target
        if not isinstance(target, str):
            self._loaded[name] = target

    def names(self) -> list[str]:
        self._read_entry_points()
        return sorted(self._entries)

    def target(self, name: str) -> str:
        """The "module:attr" string (or repr) of a name, without importing it."""
        self._read_entry_points()
        self._check(name)
        t = self._entries[name]
        return t if isinstance(t, str) else repr(t)

    def _check(self, name: str) -> None:
        if name not in self._entries:
            near = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise PluginError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})")

    def get(self, name: str):
        self._read_entry_points()
        self._check(name)
        if name not in self._loaded:
            t = self._entries[name]
            if isinstance(t, str):
                mod, _, attr = t.partition(":")
                obj = importlib.import_module(mod)
                for part in attr.split(".") if attr else ():
                    obj = getattr(obj, part)
                t = obj
            self._loaded[name] = t
        return self._loaded[name]

    def __contains__(self, name: str) -> bool:
        self._read_entry_points()
        return name in self._entries


class Method:
    """A method plug-in: its name, one-line help, config class and run function, both lazy.

    ``run(model, config, progress=None) -> Artifact``; ``config`` is a StrictConfig subclass.
    """

    def __init__(self, name: str, help: str, config: str, run: str,
                 families: tuple[str, ...] = ("sd1", "sd2", "sdxl", "sd3", "flux", "pixart")):
        self.name, self.help, self._config, self._run, self.families = name, help, config, run, families

    @staticmethod
    def _load(target: str):
        mod, _, attr = target.partition(":")
        return getattr(importlib.import_module(mod), attr)

    @property
    def config(self):
        return self._load(self._config)

    @property
    def run(self):
        return self._load(self._run)

    def __repr__(self) -> str:
        return f"Method({self.name!r})"
