"""Test-only ComfyUI custom node package: adds the tiny SelVA variants to the pack in the server.

The test server links this folder into its ``custom_nodes/`` beside ``ComfyUI-SelVA``. ComfyUI
imports each custom node folder as a module named after its path, in directory order (not
sorted), so the pack may be imported before or after this package. Either way the tables of the
one pack module are extended: if the pack is not imported yet, it is imported here exactly as
ComfyUI would (same module name), and ComfyUI's own import later reuses its submodules.

``tests/tiny.py`` imports the pack as ``comfyui_selva`` (the name the test suite uses); an import
alias maps that name onto the pack module inside the server, so one set of classes exists.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

PACK_FOLDER = "ComfyUI-SelVA"
ALIAS = "comfyui_selva"
TESTS_DIR = Path(__file__).resolve().parents[2]
REPO_ROOT = TESTS_DIR.parent
NODE_CLASS_MAPPINGS: dict = {}  # a custom node package ComfyUI accepts; it adds no node


def _pack_module_name() -> str:
    """The module name of the pack in this ComfyUI, importing the pack first if needed."""
    init = (REPO_ROOT / "__init__.py").resolve()
    for name, module in list(sys.modules.items()):
        f = getattr(module, "__file__", None)
        if f and getattr(module, "__path__", None) is not None and Path(f).resolve() == init \
                and name != ALIAS:
            return name
    # not imported yet: do what ComfyUI's load_custom_node does for a folder
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACK_FOLDER)
    name = folder.replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return name


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``comfyui_selva[.x]`` resolves to the pack module ``<target>[.x]`` itself."""

    def __init__(self, target: str):
        self.target = target

    def find_spec(self, fullname, path=None, target=None):
        if fullname == ALIAS or fullname.startswith(ALIAS + "."):
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return importlib.import_module(self.target + spec.name[len(ALIAS):])

    def exec_module(self, module):
        pass  # already executed under its real name


def _install() -> None:
    target = _pack_module_name()
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias(target))
    if str(TESTS_DIR) not in sys.path:
        sys.path.append(str(TESTS_DIR))  # last: ComfyUI's own modules keep their names
    import server_tiny

    server_tiny.register()


_install()
