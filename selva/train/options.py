"""Training settings written once: one dataclass field per setting, with its help text and limits.

A trainer's options dataclass declares each setting with :func:`setting`. From that one
declaration come

* the command-line options (:func:`add_cli_options`: ``--name`` and ``--name-with-dashes``, a
  boolean as ``--name`` / ``--no_name``, the help with its default appended),
* the ComfyUI node inputs (``nodes/options.py`` turns the same metadata into widget specs; the
  node lists the names in the order its saved workflows store them),
* the limits check (:func:`check_limits`), the same for the node, the CLI and sweep files,
* the table of every setting (:func:`settings_table`), which tools such as a sweep-file
  converter map other names onto.

The core never imports ComfyUI: the metadata here is plain data.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Optional, Sequence

from ..errors import SelvaError


def setting(default: Any, help: str, *, min: Optional[float] = None, max: Optional[float] = None,
            choices: Optional[Sequence[str]] = None, step: Optional[float] = None,
            round: Optional[float] = None, seed: bool = False) -> Any:
    """A dataclass field for one training setting; its value type is the default's.

    ``min``/``max``/``choices``: the limits (checked by :func:`check_limits`, shown as the node
    widget's range). ``step``/``round``: the node widget's increments. ``seed``: the node shows
    ComfyUI's "control after generate" beside it.
    """
    meta = {"help": help, "min": min, "max": max, "choices": tuple(choices) if choices else None,
            "step": step, "round": round, "seed": seed, "kind": type(default)}
    if isinstance(default, (list, dict, set)):
        raise TypeError("settings hold plain values (use a string or a tuple)")
    return dataclasses.field(default=default, metadata={"setting": meta})


def settings_of(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of ``cls`` declared with :func:`setting`, in declaration order."""
    return {f.name: f for f in dataclasses.fields(cls) if "setting" in f.metadata}


def meta(field: dataclasses.Field) -> dict[str, Any]:
    return field.metadata["setting"]


def settings_table(cls: type) -> list[dict[str, Any]]:
    """One row per setting: name, type, default, help and limits (for docs and name mappings)."""
    rows = []
    for name, f in settings_of(cls).items():
        m = meta(f)
        rows.append({"name": name, "type": m["kind"].__name__, "default": f.default, "help": m["help"],
                     "min": m["min"], "max": m["max"], "choices": list(m["choices"]) if m["choices"] else None})
    return rows


def check_limits(obj: Any) -> None:
    """Raise a clear error for the first setting of ``obj`` outside its declared limits."""
    for name, f in settings_of(type(obj)).items():
        m = meta(f)
        value = getattr(obj, name)
        if m["choices"] is not None and value not in m["choices"]:
            raise SelvaError(f"{name} {value!r} is not one of {', '.join(m['choices'])}.")
        if m["kind"] in (int, float) and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SelvaError(f"{name} must be a number, got {value!r}.")
            if m["min"] is not None and value < m["min"]:
                raise SelvaError(f"{name} must be at least {m['min']:g}, got {value:g}.")
            if m["max"] is not None and value > m["max"]:
                raise SelvaError(f"{name} must be at most {m['max']:g}, got {value:g}.")


# ------------------------------------------------------------------------------ command line
def option_flags(name: str, prefix: str = "") -> list[str]:
    """``--data_dir`` and ``--data-dir`` alike (``prefix``: e.g. ``no_``)."""
    flags = [f"--{prefix}{name}"]
    dashed = f"--{prefix.replace('_', '-')}{name.replace('_', '-')}"
    if dashed not in flags:
        flags.append(dashed)
    return flags


def add_cli_options(parser: argparse.ArgumentParser | Any, cls: type) -> None:
    """Add a command-line option for each setting of ``cls``."""
    for name, f in settings_of(cls).items():
        m = meta(f)
        help_text = m["help"].rstrip(".").replace("%", "%%")  # argparse %-formats help strings
        if m["kind"] is bool:
            parser.add_argument(*option_flags(name), dest=name, action="store_true", default=f.default,
                                help=f"{help_text} (default: {'on' if f.default else 'off'})")
            parser.add_argument(*option_flags(name, "no_"), dest=name, action="store_false",
                                help=f"turn {name} off")
            continue
        kwargs: dict[str, Any] = {"dest": name, "default": f.default,
                                  "help": f"{help_text} (default: {f.default!r})"}
        if m["choices"]:
            kwargs["choices"] = list(m["choices"])
        if m["kind"] in (int, float):
            kwargs["type"] = m["kind"]
        parser.add_argument(*option_flags(name), **kwargs)


def from_namespace(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """``cls`` built from the parsed settings in ``args`` (missing ones keep their defaults)."""
    values = {n: getattr(args, n) for n in settings_of(cls) if hasattr(args, n)}
    values.update(extra)
    return cls(**values)


def from_dict(cls: type, values: dict[str, Any], what: str) -> Any:
    """``cls`` built from a sweep file's or a caller's ``values``; an unknown name is an error
    naming every known one (a typo must not silently train with the default)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SelvaError(f"Unknown {what} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    return cls(**values)


def from_inputs(cls: type, inputs: dict[str, Any], **extra: Any) -> Any:
    """``cls`` built from a node's keyword inputs: the settings among them, cast to their types."""
    fields = settings_of(cls)
    values = {}
    for name, value in inputs.items():
        if name in fields:
            kind = meta(fields[name])["kind"]
            values[name] = kind(value) if kind in (int, float, bool, str) and value is not None else value
    values.update(extra)
    return cls(**values)
