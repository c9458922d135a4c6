"""Workflows saved in the earlier SelVA pack's layouts, built from web/selva_earlier_layouts.js.

For each node id and each earlier layout of it, :func:`earlier_node` makes a saved node whose
widget values are distinctive and valid both there and (where the widget exists here) here, and
:func:`expected` says what today's widgets must show after loading and which earlier widgets the
notice must list.
"""
from __future__ import annotations

import json
from typing import Any

from comfy_pack import REPO_ROOT, input_spec, is_widget, load_pack

LAYOUTS_JS = REPO_ROOT / "web" / "selva_earlier_layouts.js"
CONTROL = "control_after_generate"
VALUE_NAMES = {"SelvaLoraTrainer": {"init": {"standard": "default"}}}
# earlier widgets with no widget here that a value rule reads (the notice does not list them)
USED_BY_RULES = {("SelvaDittoOptimizer", "gram_weight")}


def earlier_table() -> dict:
    text = LAYOUTS_JS.read_text(encoding="utf-8")
    return json.loads(text[text.index("{"):text.rindex("}") + 1])


def our_widgets(node_id: str) -> dict[str, tuple]:
    cls = load_pack().NODE_CLASS_MAPPINGS[node_id]
    return {n: s for n, s in input_spec(cls).items() if is_widget(s) and not
            (len(s) > 1 and s[1].get("forceInput"))}


def our_name(node_id: str, earlier: str, ours: dict) -> str | None:
    if earlier in ours or earlier == CONTROL:
        return earlier
    return earlier_table()["renamed"].get(node_id, {}).get(earlier)


def _number(ours_opts: dict, earlier: dict, is_int: bool) -> Any:
    lo = max(ours_opts.get("min", -1e9), earlier.get("min", -1e9))
    hi = min(ours_opts.get("max", 1e9), earlier.get("max", 1e9))
    default = ours_opts.get("default", earlier.get("default", 0))
    value = default + 1 if default + 1 <= hi else (lo + hi) / 2
    if value < lo:
        value = lo
    return int(value) if is_int else float(value) + (0.25 if value + 0.25 <= hi else 0.0)


def value_for(node_id: str, w: dict, ours: dict) -> Any:
    """A value for earlier widget ``w``: valid there, and here under its counterpart."""
    name = our_name(node_id, w["name"], ours)
    spec = ours.get(name) if name else None
    opts = spec[1] if spec and len(spec) > 1 else {}
    if w.get("control"):
        return "fixed"
    if w["type"] == "COMBO":
        options = w.get("options") or []
        if spec is not None:
            ours_options = spec[0] if isinstance(spec[0], (list, tuple)) else opts.get("options", [])
            mapping = VALUE_NAMES.get(node_id, {}).get(name, {})
            shared = [o for o in options if mapping.get(o, o) in ours_options]
            if shared:
                return shared[-1]
            if not options and ours_options:  # the earlier choices were built at run time
                return list(ours_options)[-1]
        return options[-1] if options else "x"
    if w["type"] == "BOOLEAN":
        return not opts.get("default", w.get("default", False))
    if w["type"] == "STRING":
        return f"{w['name']}-saved"
    return _number(opts, w, w["type"] == "INT")


def earlier_node(node_id: str, layout: dict, node_number: int) -> dict:
    ours = our_widgets(node_id)
    return {
        "id": node_number, "type": node_id, "pos": [40 + 380 * (node_number % 4), 60 + 520 * (node_number // 4)],
        "size": [340, 400], "flags": {}, "order": node_number, "mode": 0,
        "inputs": [{"name": s["name"], "type": s["type"], "link": None} for s in layout["inputs"]],
        "outputs": [{"name": o["name"], "type": o["type"], "links": None} for o in layout["outputs"]],
        "properties": {"Node name for S&R": node_id},
        "widgets_values": [value_for(node_id, w, ours) for w in layout["widgets"]],
    }


def expected(node: dict, layout: dict) -> tuple[dict, list[str]]:
    """({our widget: value it must show}, [earlier widgets the notice must list])."""
    node_id = node["type"]
    ours = our_widgets(node_id)
    values, listed, earlier = {}, [], {}
    for w, value in zip(layout["widgets"], node["widgets_values"]):
        earlier[w["name"]] = value
        name = our_name(node_id, w["name"], ours)
        if name is None:
            if (node_id, w["name"]) not in USED_BY_RULES:
                listed.append(w["name"])
            continue
        if name == CONTROL:
            continue
        values[name] = VALUE_NAMES.get(node_id, {}).get(name, {}).get(value, value)
    if node_id == "SelvaLoraTrainer" and values.get("alpha") == 0:
        values["alpha"] = 2 * values["rank"]
    if node_id == "SelvaDittoOptimizer" and "gram_weight" in earlier:
        values.update(ditto_weights(earlier))
    if node_id == "SelvaActivationSteeringExtractor":  # it made per-position vectors
        values["mode"] = "per_position"
    return values, listed


def ditto_weights(earlier: dict) -> dict:
    """Our DITTO values for the earlier (style_weight, gram_weight, anchor_weight): there the
    objective was style_weight * (mean + gram_weight * gram) + anchor_weight * anchor, here it is
    mean + style_weight * gram + anchor_weight * anchor (only the ratios steer Adam)."""
    s, g = earlier["style_weight"], earlier["gram_weight"]
    if s > 0:
        out = {"style_weight": g}
        if "anchor_weight" in earlier:
            out["anchor_weight"] = min(earlier["anchor_weight"] / s, 100.0)
        return out
    return {"style_weight": g, "n_opt_steps": 0}  # only the anchor, which never moves the noise


def workflow(nodes: list[dict], links: list | None = None) -> dict:
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links or []),
            "nodes": nodes, "links": links or [], "groups": [], "config": {}, "extra": {}, "version": 0.4}


def every_layout() -> list[tuple[str, dict]]:
    """(node id, layout) for every earlier layout of a node this pack has."""
    classes = load_pack().NODE_CLASS_MAPPINGS
    return [(node_id, layout) for node_id, layouts in sorted(earlier_table()["nodes"].items())
            if node_id in classes for layout in layouts]


def object_info_like(node_id: str) -> dict:
    """What ComfyUI's /object_info gives the frontend for one of our nodes (the fields used)."""
    cls = load_pack().NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    return {"name": node_id,
            "input": {k: {n: [list(v[0]) if isinstance(v[0], tuple) else v[0], *v[1:]]
                          for n, v in spec.get(k, {}).items()} for k in ("required", "optional")},
            "input_order": {k: list(spec.get(k, {})) for k in ("required", "optional")},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))}
