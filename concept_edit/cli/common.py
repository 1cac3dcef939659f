"""Shared CLI pieces: flags generated from config fields, model options, one-line errors.

Nothing here imports torch or diffusers: ``--help`` and argument errors answer at once.

Example::

    >>> p = Parser(prog="demo")
    >>> add_config_args(p, UceConfig)                  # --mode, --edit, --guide, ... with help
    >>> args = p.parse_args(["--edit", "circle", "--set", "lamb=0.1"])
    >>> config_from_args(args, UceConfig).lamb
    0.1
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import typing


class UsageError(ValueError):
    """Bad command-line input; the message says what to write instead."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps example blocks as written and shows each option's default (when it has one)."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if ("default" not in h and d not in (None, False, argparse.SUPPRESS, [])
                and action.option_strings and action.nargs != 0):
            h += f" (default: {d})"
        return h


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): the message and where to look."""

    def __init__(self, *a, **kw):
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*a, **kw)

    def error(self, message: str):
        print(f"concept-edit: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def add_command(sub, name: str, help: str, examples: list[str] = (), description: str | None = None,
                **kw) -> Parser:
    """A sub-command whose help ends with runnable examples."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    return sub.add_parser(name, help=help, description=description or help, epilog=epilog,
                          formatter_class=HelpFormatter, **kw)


# -- flags from config fields ----------------------------------------------------------------
def _kind(tp):
    """'str' | 'int' | 'float' | 'bool' | 'list:str' | 'list:int' | 'list:float' | None (YAML only)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        rest = [a for a in args if a is not type(None)]
        return _kind(rest[0]) if len(rest) == 1 else None
    if tp in (str, int, float, bool):
        return tp.__name__
    if origin in (list, tuple) and len(args) >= 1 and args[0] in (str, int, float):
        return f"list:{args[0].__name__}"
    return None


def _fmt_default(v) -> str:
    if isinstance(v, (list, tuple)):
        return "; ".join(repr(x) if x == "" else str(x) for x in v) or "none"
    return repr(v) if v == "" else str(v)


def _number_list(kind: str, flag: str):
    conv = int if kind == "list:int" else float

    def parse(text: str):
        try:
            return [conv(x) for x in re.split(r"[;,]", text) if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes numbers like 1,2,3, got {text!r}") from None
    return parse


def _typed(conv, flag: str):
    def parse(text: str):
        try:
            return conv(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a {conv.__name__}, got {text!r}") from None
    return parse


def add_config_args(p: argparse.ArgumentParser, cls, skip=(), title: str | None = None) -> None:
    """One flag per config field (help text and default from the field); ``--config`` and
    ``--set KEY=VALUE`` for everything (nested settings included)."""
    hints = typing.get_type_hints(cls)
    g = p.add_argument_group(title or f"settings ({cls.__name__}; also in --config YAML)")
    g.add_argument("--config", metavar="FILE", help="YAML config (commented examples in configs/); "
                                                    "flags and --set override it")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_values",
                   help="override any config key (YAML value syntax), e.g. --set lr=1e-4; repeatable")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = _kind(hints.get(f.name))
        if kind is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        # argparse %-formats help: a literal % in a field's help (or a default) must be doubled
        help_ = f"{f.metadata.get('help', '')} (default: {_fmt_default(default)})".replace("%", "%%")
        dest = f"cfg__{f.name}"
        if kind == "bool":
            g.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif kind == "list:str":
            g.add_argument(flag, dest=dest, default=None, metavar="'A; B'", help=help_ + "; ';'-separated")
        elif kind.startswith("list:"):
            g.add_argument(flag, dest=dest, default=None, type=_number_list(kind, flag), metavar="N,N",
                           help=help_)
        else:
            conv = {"str": str, "int": int, "float": float}[kind]
            g.add_argument(flag, dest=dest, default=None, type=_typed(conv, flag), help=help_,
                           metavar=f.name.upper())


def parse_set(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"bad --set {item!r}: write KEY=VALUE, e.g. --set lr=1e-4")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            raise UsageError(f"bad --set {item!r}: the value is not valid YAML") from None
    return out


def config_from_args(args, cls, overrides: dict | None = None):
    """YAML file < generated flags < ``overrides`` (hand-written aliases) < ``--set``."""
    flags = {k[5:]: v for k, v in vars(args).items() if k.startswith("cfg__") and v is not None}
    hints = typing.get_type_hints(cls)
    for k, v in list(flags.items()):  # ';'-lists; an explicit '' is the empty prompt (guide '')
        if isinstance(v, str) and _kind(hints.get(k)) == "list:str":
            flags[k] = split_list(v) or [""]
    d = {}
    if getattr(args, "config", None):
        d = cls.yaml_dict(args.config)
    d.update(flags)
    d.update(overrides or {})
    d.update(parse_set(getattr(args, "set_values", [])))
    return cls.from_dict(d)


# -- model options -----------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="hub id, diffusers directory or .safetensors file (default: the embedded "
                        "toy world)")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="weights dtype")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    g.add_argument("--attention", default="sdpa", choices=["sdpa", "xformers"], help="attention kernel")
    g.add_argument("--family", default=None, help="family of a single-file checkpoint (sd1, sd2, sdxl, sd3)")


def check_model_arg(args) -> None:
    """What can be said about --model before anything loads (a junk file, a missing directory)."""
    m = getattr(args, "model", None)
    if not m:
        return
    if os.path.isfile(m):
        if m.endswith((".bin", ".ckpt", ".pt", ".pth", ".pkl")):
            raise UsageError(f"--model {m}: a pickled checkpoint; concept_edit never unpickles: "
                             "convert it to .safetensors or a diffusers directory")
        if not m.endswith(".safetensors"):
            raise UsageError(f"--model {m}: expected a .safetensors checkpoint or a diffusers directory")
        check_safetensors(m, "--model")
    elif m.startswith((".", "/", "~")) and not os.path.exists(os.path.expanduser(m)):
        raise UsageError(f"--model {m!r} does not exist; pass a diffusers directory, a .safetensors "
                         "file or a hub id (omit --model for the embedded toy world)")


def check_safetensors(path: str, what: str) -> None:
    """A safetensors header that parses (a renamed PNG, a pickle or a truncated file is one line)."""
    from ..core.io import ArtifactError, read_header

    try:
        read_header(path, f"{what} {path}")
    except ArtifactError as e:
        raise UsageError(str(e)) from None


def load_model(args, progress: bool | None = None):
    from ..core.loading import load

    verbose = bool(getattr(args, "verbose", False))
    return load(args.model, dtype=args.dtype, device=args.device, attention=args.attention,
                family=args.family, progress=verbose if progress is None else progress,
                quiet=not verbose)


def parse_size(text: str | None, multiple: int = 8) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not m:
        raise UsageError(f"bad --size {text!r}: write HxW, e.g. --size 64x64")
    h = int(m.group(1))
    w = int(m.group(2) or h)
    if h <= 0 or w <= 0:
        raise UsageError(f"bad --size {text!r}: height and width must be positive, e.g. --size 64x64")
    if h % multiple or w % multiple:
        raise UsageError(f"bad --size {text!r}: height and width must be positive multiples of "
                         f"{multiple} for this model, e.g. --size {max(multiple, 64)}x{max(multiple, 64)}")
    return h, w


def parse_apply(text: str) -> tuple[str, float]:
    """``FILE[@SCALE]`` -> (file, scale); the file must exist and be safetensors."""
    path, scale = text, 1.0
    if "@" in text:
        path, _, s = text.rpartition("@")
        try:
            scale = float(s)
        except ValueError:
            raise UsageError(f"bad --apply {text!r}: write FILE or FILE@SCALE, e.g. size.safetensors@2") from None
    if not os.path.isfile(path):
        raise UsageError(f"--apply {path!r}: no such file")
    check_safetensors(path, "--apply")
    return path, scale


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        vals = [float(s) for s in re.split(r"[;,]", text) if s.strip()]
    except ValueError:
        raise UsageError(f"bad {flag} {text!r}: write numbers like -2,-1,0,1,2") from None
    if not vals:
        raise UsageError(f"bad {flag} {text!r}: give at least one number")
    return vals


def positive_int(name: str):
    def conv(v: str) -> int:
        try:
            i = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {v!r}") from None
        if i <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {v!r}")
        return i
    return conv


def split_list(text: str | None) -> list[str]:
    """'a; b ;c' -> ['a', 'b', 'c'] (lists on the command line are ';'-separated)."""
    if text is None:
        return []
    return [t.strip() for t in text.split(";") if t.strip()]


def out_file(path: str, ext: str, flag: str = "--out") -> str:
    if not path.endswith(ext):
        raise UsageError(f"{flag} {path!r}: write a {ext} file name")
    return path


def fail(msg: str, code: int = 2) -> None:
    print(f"concept-edit: error: {msg}", file=sys.stderr)
    sys.exit(code)


# --- a model directory's recommended method settings (concept_edit.json "methods") ---
# The embedded toy worlds ship settings that work there (ESD, SliderSpace); when the user gives
# no --config they sit under the flags: recommended < flags < shortcuts < --set. Real models ship
# none and keep the papers' defaults.

def recommended_settings(model_arg: str | None, method: str) -> dict:
    """``methods.<method>`` of the model directory's concept_edit.json ({} when none)."""
    from ..core.embedded import default_model
    from ..core.model import read_shipped

    try:
        shipped = read_shipped(model_arg or default_model())
    except (OSError, ValueError):
        return {}
    rec = shipped.get("methods", {}).get(method, {})
    return dict(rec) if isinstance(rec, dict) else {}


def config_with_recommended(args, cls, method: str, overrides: dict | None = None):
    """The method config as ``config_from_args`` builds it, with the model's recommended settings
    as the bottom layer when no ``--config`` is given: recommended < flags < shortcuts < --set."""
    if getattr(args, "config", None):
        return config_from_args(args, cls, overrides), {}
    rec = recommended_settings(getattr(args, "model", None), method)
    cfg = config_from_args(args, cls, overrides)      # the user's settings, checked on their own
    if not rec:
        return cfg, {}
    # what the user set explicitly (flags, shortcuts, --set) wins over every recommended key
    user = {**_flag_dict(args), **(overrides or {}), **parse_set(getattr(args, "set_values", []))}
    d = cfg.to_dict()
    used = {k: v for k, v in rec.items() if k in d and k not in user}
    return cls.from_dict({**d, **used}), used


def say_recommended(args, method: str) -> None:
    """One line naming the recommended settings ``config_with_recommended`` used (none: silent)."""
    if getattr(args, "recommended", None):
        print(f"using this model's recommended {method} settings (concept_edit.json; flags and --config win): "
              + ", ".join(f"{k}={v}" for k, v in args.recommended.items()))


def _flag_dict(args) -> dict:
    return {k[5:]: v for k, v in vars(args).items() if k.startswith("cfg__") and v is not None}
