#!/usr/bin/env python3
"""Render a ComfyUI workflow (UI format) as a small .jpg thumbnail: node boxes, titles, links.

    python tools/workflow_thumbnail.py workflows/selva_ditto_style.json [more.json ...]

Writes ``<name>.jpg`` beside each workflow (ComfyUI's template browser shows a thumbnail of the
same name next to an example workflow). Run again after editing a workflow's layout.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

COLOURS = {"Selva": "#2f5f9e", "Note": "#6b6b3a"}


def _colour(node_type: str) -> str:
    for prefix, colour in COLOURS.items():
        if node_type.startswith(prefix):
            return colour
    return "#4a4a4a"


def render(workflow_path: Path, out_path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    wf = json.loads(Path(workflow_path).read_text(encoding="utf-8"))
    nodes = {n["id"]: n for n in wf["nodes"]}
    xs = [n["pos"][0] for n in nodes.values()] + [n["pos"][0] + n["size"][0] for n in nodes.values()]
    ys = [n["pos"][1] for n in nodes.values()] + [n["pos"][1] + n["size"][1] for n in nodes.values()]
    x0, x1, y0, y1 = min(xs) - 40, max(xs) + 40, min(ys) - 40, max(ys) + 40
    fig = Figure(figsize=(6.4, 6.4 * (y1 - y0) / (x1 - x0)), dpi=100, facecolor="#202020")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)  # screen coordinates: y grows downwards
    ax.axis("off")
    for link in wf.get("links", []):
        _, src, _, dst, _, _ = link[:6]
        a, b = nodes.get(src), nodes.get(dst)
        if a and b:
            ax.plot([a["pos"][0] + a["size"][0], b["pos"][0]], [a["pos"][1] + 30, b["pos"][1] + 30],
                    color="#9ab", linewidth=1.2)
    for n in nodes.values():
        (x, y), (w, h) = n["pos"], n["size"]
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=12",
                                    facecolor=_colour(n["type"]), edgecolor="#ddd", linewidth=0.8))
        title = n["type"].replace("Selva", "SelVA ")
        ax.text(x + 12, y + 28, title, color="white", fontsize=7, va="center", clip_on=True)
    fig.savefig(str(out_path), format="jpg", facecolor=fig.get_facecolor())
    return out_path


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for name in argv:
        path = Path(name)
        print(render(path, path.with_suffix(".jpg")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
