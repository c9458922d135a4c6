"""Load the repository as ComfyUI loads a custom node pack, and describe ComfyUI's core nodes.

ComfyUI imports ``custom_nodes/<folder>/__init__.py`` with ``spec_from_file_location`` (the
folder's path as module name, the folder as its only search location) and reads
NODE_CLASS_MAPPINGS. Doing exactly that here checks that the pack imports without ComfyUI on
the path and with relative imports only.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[1]
# conftest.py registers the repository as this package (without running the root __init__) for
# the core tests; the node tests run the root __init__ into the same package, so both see one
# copy of ``selva`` (one VARIANTS table, one SelvaError class).
PACK_NAME = "comfyui_selva"


def load_pack() -> ModuleType:
    """The pack with NODE_CLASS_MAPPINGS, imported through its root ``__init__.py`` as ComfyUI does."""
    module = sys.modules.get(PACK_NAME)
    if module is not None and getattr(module, "NODE_CLASS_MAPPINGS", None) is not None:
        return module
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)])
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def pack_module(name: str) -> ModuleType:
    """A submodule of the pack, e.g. ``nodes.features`` or ``selva.errors``."""
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.{name}")


# ComfyUI core nodes the bundled workflows use, as defined in ComfyUI (comfy_extras/nodes_video.py,
# nodes_audio.py, nodes_mask.py, nodes.py): input name -> type, outputs, and how many
# widgets_values the frontend stores for them.
CORE_NODES: dict[str, dict] = {
    "LoadVideo": {"inputs": {"file": "COMBO"}, "outputs": [("VIDEO", "VIDEO")], "widgets": 2},
    "SaveVideo": {"inputs": {"video": "VIDEO", "filename_prefix": "STRING", "format": "COMBO",
                             "codec": "COMBO"}, "outputs": [], "widgets": 3},
    "GetVideoComponents": {"inputs": {"video": "VIDEO"},
                           "outputs": [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")],
                           "widgets": 0},
    "CreateVideo": {"inputs": {"images": "IMAGE", "fps": "FLOAT", "audio": "AUDIO"},
                    "outputs": [("VIDEO", "VIDEO")], "widgets": 1},
    "SaveAudio": {"inputs": {"audio": "AUDIO", "filename_prefix": "STRING"}, "outputs": [],
                  "widgets": 1},
    "PreviewAudio": {"inputs": {"audio": "AUDIO"}, "outputs": [], "widgets": 0},
    "LoadAudio": {"inputs": {"audio": "COMBO"}, "outputs": [("AUDIO", "AUDIO")], "widgets": 3},
    "LoadImage": {"inputs": {"image": "COMBO"}, "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")],
                  "widgets": 2},
    "ImageToMask": {"inputs": {"image": "IMAGE", "channel": "COMBO"}, "outputs": [("MASK", "MASK")],
                    "widgets": 1},
}
# Nodes that exist only in the frontend (never sent to the server).
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def input_spec(node_cls: type) -> dict[str, tuple]:
    """Every declared input (required then optional, in order) -> its (type, options) spec."""
    spec = node_cls.INPUT_TYPES()
    out: dict[str, tuple] = {}
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            out[name] = value
    return out


def is_widget(spec: tuple) -> bool:
    kind = spec[0]
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def widget_value_count(spec: dict[str, tuple]) -> int:
    """How many widgets_values the frontend stores: one per widget, plus seed controls."""
    n = 0
    for value in spec.values():
        if is_widget(value):
            n += 1
            if len(value) > 1 and value[1].get("control_after_generate"):
                n += 1
    return n


def types_overlap(a: str, b: str) -> bool:
    """ComfyUI's rule: comma-separated type lists match when they share one type ('*' = any)."""
    if a == "*" or b == "*":
        return True
    return bool({t.strip() for t in a.split(",")} & {t.strip() for t in b.split(",")})


CONTROL_AFTER_GENERATE = "control_after_generate"


def widget_names(node_cls: type) -> list[str]:
    """The names behind a saved node's ``widgets_values``, in order (the frontend stores a seed's
    control mode right after it, as ``control_after_generate``)."""
    names = []
    for name, value in input_spec(node_cls).items():
        if is_widget(value):
            names.append(name)
            if len(value) > 1 and value[1].get("control_after_generate"):
                names.append(CONTROL_AFTER_GENERATE)
    return names


def saved_widget_values(node: dict, names: list[str]) -> dict:
    """A saved node's widget values by name, read with the widget order ``names``."""
    return dict(zip(names, node.get("widgets_values") or []))
