"""ComfyUI widget specs from the core's training settings (``selva/train/options.py``).

A node lists the settings it shows, in the order its saved workflows store them; everything
else (type, default, limits, tooltip) comes from the setting's one declaration.
"""
from __future__ import annotations

from typing import Any, Iterable

_WIDGET = {int: "INT", float: "FLOAT", str: "STRING", bool: "BOOLEAN"}


def option_inputs(cls: type, names: Iterable[str]) -> dict[str, tuple]:
    """``{name: (widget type or choice list, options)}`` for the settings ``names`` of ``cls``."""
    from ..selva.train.options import meta, settings_of

    fields = settings_of(cls)
    out: dict[str, tuple] = {}
    for name in names:
        if name not in fields:
            raise KeyError(f"{cls.__name__} has no setting {name!r}")
        f = fields[name]
        m = meta(f)
        opts: dict[str, Any] = {"default": f.default, "tooltip": m["help"]}
        for key in ("min", "max", "step", "round"):
            if m[key] is not None:
                opts[key] = m[key]
        if m["seed"]:
            opts["control_after_generate"] = True
        kind = list(m["choices"]) if m["choices"] else _WIDGET[m["kind"]]
        out[name] = (kind, opts)
    return out
