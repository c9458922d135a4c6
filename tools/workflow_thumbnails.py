#!/usr/bin/env python3
"""Draw a thumbnail ``<name>.jpg`` beside every workflow in ``workflows/`` (the picture ComfyUI's
template browser shows): the graph's nodes as titled boxes and its links, from the workflow's own
layout.

    python tools/workflow_thumbnails.py            # (re)draw all
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLORS = {"Selva": "#3b6ea5", "Note": "#7a6a2f"}


def draw(workflow: Path) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    wf = json.loads(workflow.read_text(encoding="utf-8"))
    nodes = {n["id"]: n for n in wf["nodes"]}
    fig = Figure(figsize=(4.0, 3.0), dpi=100, facecolor="#202020")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_facecolor("#202020")
    ax.axis("off")
    for lid, src, _, dst, _, _ in wf["links"]:
        a, b = nodes[src], nodes[dst]
        x0, y0 = a["pos"][0] + a["size"][0], a["pos"][1] + 20
        x1, y1 = b["pos"][0], b["pos"][1] + 20
        ax.plot([x0, (x0 + x1) / 2, (x0 + x1) / 2, x1], [y0, y0, y1, y1], color="#9a9a9a", lw=1.2)
    for n in wf["nodes"]:
        x, y = n["pos"]
        w, h = n["size"]
        color = next((c for k, c in COLORS.items() if n["type"].startswith(k)), "#555555")
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=4", fc=color, ec="#dddddd", lw=0.8))
        label = n.get("title") or n["type"].replace("Selva", "SelVA ")
        ax.text(x + 10, y + 30, label, color="white", fontsize=6, va="top", clip_on=True)
    xs = [n["pos"][0] for n in wf["nodes"]] + [n["pos"][0] + n["size"][0] for n in wf["nodes"]]
    ys = [n["pos"][1] for n in wf["nodes"]] + [n["pos"][1] + n["size"][1] for n in wf["nodes"]]
    ax.set_xlim(min(xs) - 40, max(xs) + 40)
    ax.set_ylim(max(ys) + 40, min(ys) - 90)  # screen coordinates: y grows downwards
    ax.text(min(xs), min(ys) - 45, workflow.stem.replace("_", " "), color="white", fontsize=9, va="center")
    out = workflow.with_suffix(".jpg")
    fig.savefig(out, format="jpg", facecolor=fig.get_facecolor())
    return out


def main() -> int:
    for path in sorted((ROOT / "workflows").glob("*.json")):
        print(draw(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
