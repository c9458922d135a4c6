"""Workflows saved in each of the earlier SelVA pack's layouts, opened in ComfyUI's real frontend
(headless Chromium): every value lands on the widget of the same name, one notice lists what has
no counterpart and the sockets to reconnect, and workflows saved with this pack open as before."""
from __future__ import annotations

import json

import pytest

import comfy_frontend as F
import earlier_workflows as EW
from comfy_server import REPO_ROOT
from test_compat_workflows import SOCKET_ITEMS, socket_workflow

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def page(comfy):
    reason = F.missing_browser_reason()
    if reason:
        pytest.skip(f"[browser] {reason}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = F.launch(p)
        page = F.open_app(browser, comfy)
        try:
            yield page
        finally:
            browser.close()


def _notice(page) -> tuple[list, str]:
    items = page.evaluate("() => window.__selvaCompatNotice || []")
    box = page.locator("#selva-compat-notice")
    return items, box.inner_text() if box.count() else ""


def test_each_earlier_layout_opens_by_name_with_one_notice(page):
    layouts = EW.every_layout()
    nodes = [EW.earlier_node(node_id, layout, i + 1) for i, (node_id, layout) in enumerate(layouts)]
    loaded = F.load_graph(page, EW.workflow(json.loads(json.dumps(nodes))), "earlier layouts")
    on_canvas = {n["id"]: n for n in loaded["nodes"]}
    for node, (node_id, layout) in zip(nodes, layouts):
        want, listed = EW.expected(node, layout)
        widgets = on_canvas[node["id"]]["widgets"]
        for name, value in want.items():
            got = widgets[name]
            same = got == value or (isinstance(value, float) and abs(got - value) < 1e-9)
            assert same, (node_id, layout["refs"], name, got, value)
    items, text = _notice(page)
    assert page.locator("#selva-compat-notice").count() == 1
    for node, (node_id, layout) in zip(nodes, layouts):
        _, listed = EW.expected(node, layout)
        names = {i["input"] for i in items if i["node"].endswith(f"#{node['id']}")}
        assert set(listed) <= names, (node_id, listed, names)
    # shown to the user: the TI Trainer's warmup_steps has no counterpart here (the LoRA
    # Trainer's lora_dropout, listed before, now lands on our lora_dropout)
    assert "warmup_steps" in text and "SelvaTextualInversionTrainer #" in text
    assert "lora_dropout" not in text


def test_sockets_to_reconnect_are_listed(page):
    wf, _ = socket_workflow()
    loaded = F.load_graph(page, wf, "earlier sockets")
    items, text = _notice(page)
    assert SOCKET_ITEMS <= {(i["node"], i["input"]) for i in items}, items
    trainer = next(n for n in loaded["nodes"] if n["type"] == "SelvaLoraTrainer")
    assert trainer["widgets"]["alpha"] == 64 and "SelvaSpectralMatcher #" in text


SAVED = sorted(p for p in (REPO_ROOT / "tests" / "data" / "saved_workflows").glob("*.json")
               if not p.name.endswith(".widgets.json"))
BUNDLED = sorted((REPO_ROOT / "workflows").glob("*.json"))


@pytest.mark.parametrize("path", SAVED + BUNDLED, ids=[p.stem for p in SAVED + BUNDLED])
def test_our_workflows_open_as_before_without_a_notice(page, path):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    F.load_graph(page, workflow, path.stem)
    # left exactly as saved (tests/test_comfyui_frontend.py checks the values land by name)
    marked = page.evaluate("() => app.graph.serialize().nodes"
                           ".filter(n => n.properties && n.properties.selva_migrated_from).map(n => n.id)")
    assert marked == [], (path.name, marked)
    items, _ = _notice(page)
    assert items == [] and page.locator("#selva-compat-notice").count() == 0, (path.name, items)
