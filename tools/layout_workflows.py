"""Move the nodes of the bundled workflows apart so that none covers another, as the frontend sizes them.

ComfyUI's frontend grows a node to fit its widgets when it loads a workflow, so the sizes saved in
a file are only a lower bound: a node that gained inputs ends up under its neighbour. This starts
a real ComfyUI (``COMFYUI_DIR`` or ``--comfyui``) with the pack, loads each workflow into the
frontend in headless Chromium, reads every node's rectangle (title bar included) and moves nodes
down, never sideways, until no two rectangles come within ``--gap`` pixels; the columns of the
original layout stay. Each file is written back with the frontend's sizes and the new positions,
then loaded again to check. Render the thumbnails again afterwards:

    python tools/layout_workflows.py                  # every workflow in workflows/
    python tools/layout_workflows.py "workflows/SelVA Video to Audio.json"
    python tools/workflow_thumbnails.py

``tests/test_comfyui_frontend.py`` checks that no two nodes of a bundled workflow overlap.
"""
from __future__ import annotations

import argparse
import json
import re
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

import comfy_frontend as F  # noqa: E402
from comfy_server import load_workflow, start_server  # noqa: E402

GAP = 30  # pixels between two rectangles: room for a link's curve and for the eye


def _intersects(a: list[float], b: list[float], gap: float) -> bool:
    return a[0] < b[0] + b[2] + gap and b[0] < a[0] + a[2] + gap and a[1] < b[1] + b[3] + gap \
        and b[1] < a[1] + a[3] + gap


def push_apart(boxes: dict[int, list[float]], gap: float = GAP) -> dict[int, float]:
    """node id -> how far to move it down so that no rectangles meet.

    Nodes are placed top to bottom (then left to right) of the original layout; each moves down
    below every placed node it would meet, so a column keeps its order and its x.
    """
    order = sorted(boxes, key=lambda i: (boxes[i][1], boxes[i][0]))
    placed: list[list[float]] = []
    moves: dict[int, float] = {}
    for node_id in order:
        box = list(boxes[node_id])
        moved = True
        while moved:
            moved = False
            for other in placed:
                if _intersects(box, other, gap):
                    box[1] = other[1] + other[3] + gap
                    moved = True
        placed.append(box)
        moves[node_id] = box[1] - boxes[node_id][1]
    return moves


def json_like(original: str, data) -> str:
    """``data`` as JSON in ``original``'s indent and final newline, so a re-layout shows in a
    diff as the moved positions only."""
    m = re.match(r"[\[{]\n( +)\S", original)
    text = json.dumps(data, indent=len(m.group(1)) if m else 1, ensure_ascii=False)
    return text + ("\n" if original.endswith("\n") else "")


def lay_out(page, path: Path, gap: float = GAP) -> int:
    """Rewrite one workflow file; returns how many nodes moved."""
    text = path.read_text(encoding="utf-8")
    workflow = json.loads(text)
    F.load_graph(page, load_workflow(path), path.stem)
    measured = {b["id"]: b for b in F.node_boxes(page)}
    moves = push_apart({i: b["box"] for i, b in measured.items()}, gap)
    for node in workflow["nodes"]:
        m = measured[node["id"]]
        node["size"] = [round(v) for v in m["size"]]
        node["pos"] = [round(node["pos"][0]), round(node["pos"][1] + moves[node["id"]])]
    path.write_text(json_like(text, workflow), encoding="utf-8")
    F.load_graph(page, load_workflow(path), path.stem)
    left = F.overlapping_nodes(F.node_boxes(page))
    if left:
        raise SystemExit(f"{path.name}: still overlapping after the layout: "
                         f"{[(a['type'], b['type']) for a, b in left]}")
    return sum(1 for v in moves.values() if v)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workflows", nargs="*", type=Path, help="workflow files (default: every workflows/*.json)")
    ap.add_argument("--gap", type=float, default=GAP, help=f"pixels between nodes (default {GAP})")
    ap.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_DIR"),
                    help="ComfyUI checkout (default: $COMFYUI_DIR)")
    args = ap.parse_args(argv)
    if not args.comfyui or not (Path(args.comfyui) / "main.py").is_file():
        ap.error("point --comfyui or COMFYUI_DIR at a ComfyUI checkout")
    reason = F.missing_browser_reason()
    if reason:
        ap.error(reason)
    paths = args.workflows or sorted((REPO_ROOT / "workflows").glob("*.json"))
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="selva-layout-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        server = start_server(Path(args.comfyui), Path(tmp) / "base", [models], custom_nodes=[])
        try:
            with sync_playwright() as p:
                browser = F.launch(p)
                page = F.open_app(browser, server)
                for path in paths:
                    print(f"{path.name}: {lay_out(page, path.resolve(), args.gap)} node(s) moved")
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
