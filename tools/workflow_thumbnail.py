#!/usr/bin/env python3
"""Draw a workflow's graph (nodes at their canvas positions, links between them) as a thumbnail.

    python tools/workflow_thumbnail.py workflows/selva_long_video.json   # writes selva_long_video.jpg

ComfyUI's template browser shows ``<workflow name>.jpg`` beside a workflow in example_workflows/.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

COLOURS = {"Selva": "#355c7d", "Note": "#6c5b2f"}  # our nodes, notes; core nodes grey
LINK_COLOURS = {"AUDIO": "#d8a0ff", "VIDEO": "#7fd3ff", "SELVA_FEATURES": "#ffd37f", "SELVA_MODEL": "#a0e0a0"}


def render(workflow: dict, out: Path, width_px: int = 640) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    nodes = {n["id"]: n for n in workflow["nodes"]}
    x0 = min(n["pos"][0] for n in nodes.values()) - 40
    y0 = min(n["pos"][1] for n in nodes.values()) - 40
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes.values()) + 40
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes.values()) + 40
    fig = plt.figure(figsize=(width_px / 100, width_px / 100 * (y1 - y0) / (x1 - x0)), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_facecolor("#202020")
    ax.axis("off")
    fig.patch.set_facecolor("#202020")
    for _, src, src_slot, dst, dst_slot, typ in workflow["links"]:
        a, b = nodes[src], nodes[dst]
        xa, ya = a["pos"][0] + a["size"][0], a["pos"][1] + 40 + 22 * src_slot
        xb, yb = b["pos"][0], b["pos"][1] + 40 + 22 * dst_slot
        mid = (xa + xb) / 2
        ax.plot([xa, mid, mid, xb], [ya, ya, yb, yb], color=LINK_COLOURS.get(typ, "#bbbbbb"), lw=2)
    for n in nodes.values():
        x, y = n["pos"]
        w, h = n["size"]
        colour = next((c for k, c in COLOURS.items() if n["type"].startswith(k)), "#4a4a4a")
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=12",
                                    fc=colour, ec="#999999", lw=1))
        ax.text(x + 12, y + 28, n["type"].replace("Selva", "SelVA "), color="white", fontsize=7,
                weight="bold", va="bottom")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=out.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, facecolor=fig.get_facecolor())
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
        plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workflows", nargs="+", type=Path)
    for path in p.parse_args().workflows:
        print(render(json.loads(path.read_text(encoding="utf-8")), path.with_suffix(".jpg")))


if __name__ == "__main__":
    main()
