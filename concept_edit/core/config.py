"""Strict config dataclasses: help text per field, checks, unknown keys are errors.

Example::

    >>> import dataclasses
    >>> from concept_edit.core.config import StrictConfig, field
    >>> @dataclasses.dataclass
    ... class Cfg(StrictConfig):
    ...     lr: float = field(1e-4, "learning rate")
    >>> Cfg.from_dict({"lr": 3e-4}).lr
    0.0003
    >>> Cfg.from_dict({"lrr": 1})
    Traceback (most recent call last):
    ConfigError: unknown key 'lrr' in Cfg; did you mean 'lr'?
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the fix."""


def field(default, help: str, **kw):
    """A dataclass field with help text (shown by the CLI and in error messages)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def nearest(name: str, choices, n: int = 1) -> list[str]:
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.0)


def _coerce(cls_name: str, key: str, tp, value):
    origin = typing.get_origin(tp)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{cls_name}.{key} must be {tp.__name__}, got {value!r}")
    if tp is float and isinstance(value, (int, float)):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        if tp is str and value is None:
            return value
        raise ConfigError(f"{cls_name}.{key} must be {tp.__name__}, got {value!r}")
    if origin in (list, tuple) and isinstance(value, str):
        value = [v.strip() for v in value.split(";") if v.strip()] if value else []
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{cls_name}.{key} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if args and args[0] in (int, float, str, bool):
            value = [_coerce(cls_name, f"{key}[{i}]", args[0], v) for i, v in enumerate(value)]
        return tuple(value) if origin is tuple else list(value)
    if tp is dict and not isinstance(value, dict):
        raise ConfigError(f"{cls_name}.{key} must be a mapping, got {value!r}")
    return value


class StrictConfig:
    """Mixin for method configs: ``from_dict`` rejects unknown keys, ``check()`` validates."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            tp = hints.get(f.name)
            val = getattr(self, f.name)
            if typing.get_origin(tp) is typing.Union or str(tp).startswith("typing.Optional") or \
                    type(tp).__name__ == "UnionType":
                args = [a for a in typing.get_args(tp) if a is not type(None)]
                if val is not None and len(args) == 1:
                    object.__setattr__(self, f.name, _coerce(type(self).__name__, f.name, args[0], val))
                continue
            object.__setattr__(self, f.name, _coerce(type(self).__name__, f.name, tp, val))
        self.check()

    def check(self) -> None:
        """Override: raise ConfigError naming the field and the fix."""

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, d: dict | None, **overrides):
        if d is not None and not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping of keys to values, got {type(d).__name__}")
        d = dict(d or {})
        d.update({k: v for k, v in overrides.items() if v is not None})
        valid = cls.keys()
        for k in d:
            if not isinstance(k, str):
                raise ConfigError(f"key {k!r} in {cls.__name__} is not a name; write keys as names, e.g. "
                                  f"`{valid[0]}: ...`")
            if k not in valid:
                raise ConfigError(f"unknown key {k!r} in {cls.__name__}; did you mean "
                                  f"{nearest(k, valid)[0]!r}? (valid: {', '.join(valid)})")
        try:
            return cls(**d)
        except ConfigError:
            raise
        except (TypeError, AttributeError, KeyError, ValueError) as e:  # a nested value of the wrong shape
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"{cls.__name__}: invalid settings ({msg}); see configs/ for examples") from None

    @classmethod
    def yaml_dict(cls, path: str) -> dict:
        """The mapping in a YAML file (a one-line ConfigError if missing or malformed)."""
        import yaml

        try:
            with open(path) as f:
                d = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path!r} not found; see configs/ for examples") from None
        except IsADirectoryError:
            raise ConfigError(f"config {path!r} is a directory; pass a YAML file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file; pass a YAML config") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}; see configs/ for examples") from None
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
        return d

    @classmethod
    def from_yaml(cls, path: str, **overrides):
        return cls.from_dict(cls.yaml_dict(path), **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)
