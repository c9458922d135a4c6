"""ComfyUI's own web frontend in headless Chromium, driven by Playwright.

The server serves the frontend it was installed with (``comfyui-frontend-package``); this module
opens it in Debian's ``chromium`` (``SELVA_CHROMIUM`` or ``chromium`` on PATH) and wraps the few
things the tests and ``tools/workflow_thumbnails.py`` do there: load a workflow into the canvas,
change widget values, convert the graph with the frontend's ``app.graphToPrompt()``, read the
template browser, and take a picture of the canvas.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

# As root in a closed network: no sandbox, no GPU, and none of the background connections that
# Chromium would otherwise try (and have refused) at start-up.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1280, "height": 800}
APP_TIMEOUT_MS = 120_000
# Settings written before the page opens: no first-run template dialog, no minimap on pictures.
QUIET_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}


def find_chromium() -> Optional[str]:
    exe = os.environ.get("SELVA_CHROMIUM")
    if exe and Path(exe).is_file():
        return exe
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing_browser_reason() -> Optional[str]:
    """Why no browser test can run here, or None when Playwright and Chromium are there."""
    try:
        import playwright.sync_api  # noqa: F401  (only whether it imports)
    except ImportError:
        return "Playwright's Python package is not installed (pip install playwright)"
    if find_chromium() is None:
        return "no Chromium found (apt-get install chromium, or set SELVA_CHROMIUM)"
    return None


def launch(playwright) -> Any:
    return playwright.chromium.launch(executable_path=find_chromium(), headless=True,
                                      args=CHROMIUM_ARGS)


def open_app(browser, comfy, viewport: Optional[dict] = None):
    """A new page with ComfyUI's frontend loaded (``window.app`` ready, no dialog open)."""
    for key, value in QUIET_SETTINGS.items():
        comfy.post(f"/settings/{key}", value)
    page = browser.new_page(viewport=viewport or VIEWPORT)
    page.errors = []  # uncaught page errors, for tests that want to see them
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(comfy.url)
    page.wait_for_function("window.app && window.app.graph && window.LiteGraph && "
                           "Object.keys(LiteGraph.registered_node_types).length > 0",
                           timeout=APP_TIMEOUT_MS)
    close_dialogs(page)
    return page


def close_dialogs(page) -> None:
    for _ in range(5):
        if page.locator("[role=dialog]").count() == 0:
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(200)


def dialog_texts(page) -> list[str]:
    return [d.inner_text() for d in page.locator("[role=dialog]").all()]


def load_graph(page, workflow: dict, name: str = "test") -> dict:
    """Load a UI-format workflow as the user would (drop / template); report what the canvas has.

    Returns ``{"nodes": [{id, type, registered, widgets: {name: value}}], "dialogs": [texts]}``;
    a missing node type shows as ``registered: False`` (and the frontend's missing-nodes dialog).
    """
    page.evaluate("async ([wf, name]) => { await app.loadGraphData(wf, true, true, name); }",
                  [workflow, name])
    page.wait_for_timeout(300)
    nodes = page.evaluate("""() => app.graph.nodes.map(n => ({
        id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type],
        widgets: Object.fromEntries((n.widgets || []).map(w => [w.name, w.value]))}))""")
    return {"nodes": nodes, "dialogs": dialog_texts(page)}


def set_widgets(page, values_by_type: dict[str, dict[str, Any]],
                values_by_name: Optional[dict[str, Any]] = None) -> list[str]:
    """Change widget values in the page, as typing into the widgets would.

    ``values_by_type`` maps a node type to {widget name: value}; ``values_by_name`` applies to a
    widget of that name on any node (the per-type table wins). Returns "type.widget" for every
    widget changed.
    """
    return page.evaluate("""([byType, byName]) => {
        const changed = [];
        for (const node of app.graph.nodes) {
            for (const w of node.widgets || []) {
                const table = byType[node.type] || {};
                const has = Object.prototype.hasOwnProperty;
                const value = has.call(table, w.name) ? table[w.name]
                            : has.call(byName, w.name) ? byName[w.name] : undefined;
                if (value === undefined) continue;
                w.value = value;
                if (w.callback) w.callback(value, app.canvas, node);
                changed.push(node.type + "." + w.name);
            }
        }
        app.graph.setDirtyCanvas(true, true);
        return changed;
    }""", [values_by_type, values_by_name or {}])


def graph_to_prompt(page) -> dict:
    """The API prompt the frontend would queue (``app.graphToPrompt().output``)."""
    return page.evaluate("async () => (await app.graphToPrompt()).output")


def _card_info(card) -> dict:
    card.scroll_into_view_if_needed()  # thumbnails load when their card comes into view
    try:
        card.locator("img").first.wait_for(timeout=10_000)
        card.evaluate("c => new Promise(r => { const i = c.querySelector('img'); "
                      "if (i.complete) r(); else { i.onload = r; i.onerror = r; "
                      "setTimeout(r, 10000); } })")
    except Exception:  # no picture: reported by the caller
        pass
    return card.evaluate("""c => {
        const img = c.querySelector('img');
        return {name: c.dataset.testid.slice('template-workflow-'.length),
                text: c.innerText, thumbnail: img ? img.getAttribute('src') : null,
                thumbnail_loaded: !!img && img.complete && img.naturalWidth > 0,
                thumbnail_size: img ? [img.naturalWidth, img.naturalHeight] : null};
    }""")


def template_cards(page, module: str) -> list[dict]:
    """The template browser's cards for one custom node pack: name, visible text, thumbnail."""
    page.evaluate("app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    dialog = page.get_by_role("dialog")
    dialog.wait_for(timeout=30_000)
    dialog.get_by_text(module, exact=True).first.click()
    selector = '[role=dialog] [data-testid^="template-workflow-"]'
    page.wait_for_selector(selector, timeout=30_000)
    # The card grid is virtualised (cards outside the view leave the page) and fills in as it
    # is scrolled: read the cards present, scroll to the last one, until no new card appears.
    found: dict[str, dict] = {}
    duplicates: list[dict] = []  # the same card twice on the page at once
    while True:
        before = len(found)
        on_page: set[str] = set()
        for card in page.locator(selector).all():
            try:
                name = card.evaluate("c => c.dataset.testid")
                if name in on_page:
                    duplicates.append(found[name])
                on_page.add(name)
                if name not in found:
                    found[name] = _card_info(card)
            except Exception:  # scrolled out of the page meanwhile: read on the next pass
                continue
        page.locator(selector).last.scroll_into_view_if_needed()
        # more cards load when the grid's own scroll container reaches its end
        page.evaluate("""() => { for (const el of document.querySelectorAll('[role=dialog] *'))
            if (el.scrollHeight > el.clientHeight + 4) { el.scrollTop = el.scrollHeight;
                el.dispatchEvent(new Event('scroll')); } }""")
        page.wait_for_timeout(1000)
        if len(found) == before:
            break
    cards = list(found.values()) + duplicates
    close_dialogs(page)
    return cards


def fit_view(page) -> None:
    page.evaluate("app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_timeout(300)


def canvas_picture(page, path: Path) -> Path:
    """A PNG of the canvas (the graph fitted into view)."""
    fit_view(page)
    page.locator("#graph-canvas").screenshot(path=str(path))
    return path


def node_boxes(page) -> list[dict]:
    """Every node's rectangle on the canvas as the frontend sized it after loading: ``{id, type,
    box: [x, y, width, height]}``, title bar included (LiteGraph's bounding rectangle)."""
    return page.evaluate("""() => app.graph.nodes.map(n => {
        let box;
        if (n.boundingRect) box = Array.from(n.boundingRect);
        else { const out = new Float32Array(4); n.getBounding(out); box = Array.from(out); }
        return {id: n.id, type: n.type, box: box, pos: Array.from(n.pos), size: Array.from(n.size)};
    })""")


def overlapping_nodes(boxes: list[dict], margin: float = 0.0) -> list[tuple[dict, dict]]:
    """Pairs of nodes whose rectangles (from :func:`node_boxes`) intersect."""
    pairs = []
    for i, a in enumerate(boxes):
        ax, ay, aw, ah = a["box"]
        for b in boxes[i + 1:]:
            bx, by, bw, bh = b["box"]
            if (ax < bx + bw + margin and bx < ax + aw + margin
                    and ay < by + bh + margin and by < ay + ah + margin):
                pairs.append((a, b))
    return pairs
