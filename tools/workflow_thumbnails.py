"""Render the template thumbnails: each workflow as ComfyUI's own frontend draws it.

ComfyUI's template browser shows ``<name>.jpg`` beside each ``workflows/<name>.json`` of a pack.
This starts a real ComfyUI (``COMFYUI_DIR``, or ``--comfyui``) with the pack, opens its frontend
in headless Chromium (Playwright, Debian's ``chromium``), loads each workflow, fits it into view
with the interface hidden (focus mode) and saves the picture as a JPEG beside the workflow
(written to a temporary file, then renamed into place).

    python tools/workflow_thumbnails.py                       # every workflow
    python tools/workflow_thumbnails.py --missing             # only those without a thumbnail
    python tools/workflow_thumbnails.py "workflows/SelVA Video to Audio.json"

Needs ComfyUI's requirements, ``pip install playwright`` and ``apt-get install chromium``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

import comfy_frontend as F  # noqa: E402
from comfy_server import load_workflow, start_server  # noqa: E402

SIZE = (768, 480)  # pixels of the thumbnail (the browser's cards show about 4:3 to 16:10)
VIEWPORT = {"width": 1536, "height": 960}  # twice SIZE: text stays legible when scaled down
QUALITY = 85
# Nothing but the graph on the picture: no canvas statistics, no canvas toolbar; and node text
# drawn at any zoom (a wide graph fitted into view otherwise shows empty boxes).
PICTURE_SETTINGS = {"Comfy.Graph.CanvasInfo": False, "Comfy.Graph.CanvasMenu": False,
                    "LiteGraph.Canvas.MinFontSizeForLOD": 1}


def render(page, workflow_path: Path, out: Path) -> Path:
    from PIL import Image

    F.load_graph(page, load_workflow(workflow_path), workflow_path.stem)
    page.evaluate("app.canvas.deselectAll && app.canvas.deselectAll()")
    F.fit_view(page)
    page.wait_for_timeout(500)  # DOM widgets (text boxes) follow the canvas a frame later
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "shot.png"
        page.screenshot(path=str(png))
        with Image.open(png) as img:
            thumb = img.convert("RGB").resize(SIZE, Image.LANCZOS)
        fd, partial = tempfile.mkstemp(dir=out.parent, prefix=".tmp-", suffix=".jpg")
        os.close(fd)
        try:
            thumb.save(partial, "JPEG", quality=QUALITY, optimize=True)
            os.chmod(partial, 0o644)  # an ordinary file of the repository, not a private temp file
            os.replace(partial, out)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workflows", nargs="*", type=Path,
                    help="workflow files (default: every workflows/*.json)")
    ap.add_argument("--missing", action="store_true", help="only workflows without a thumbnail")
    ap.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_DIR"),
                    help="ComfyUI checkout (default: $COMFYUI_DIR)")
    args = ap.parse_args(argv)
    if not args.comfyui or not (Path(args.comfyui) / "main.py").is_file():
        ap.error("point --comfyui or COMFYUI_DIR at a ComfyUI checkout")
    reason = F.missing_browser_reason()
    if reason:
        ap.error(reason)
    paths = args.workflows or sorted((REPO_ROOT / "workflows").glob("*.json"))
    if args.missing:
        paths = [p for p in paths if not p.with_suffix(".jpg").is_file()]
    if not paths:
        print("nothing to render")
        return
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="selva-thumbs-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        server = start_server(Path(args.comfyui), Path(tmp) / "base", [models], custom_nodes=[])
        try:
            for key, value in PICTURE_SETTINGS.items():
                server.post(f"/settings/{key}", value)
            with sync_playwright() as p:
                browser = F.launch(p)
                page = F.open_app(browser, server, viewport=VIEWPORT)
                page.evaluate("app.extensionManager.command.execute('Workspace.ToggleFocusMode')")
                for path in paths:
                    out = render(page, path.resolve(), path.resolve().with_suffix(".jpg"))
                    print(out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out)
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
