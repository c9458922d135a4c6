"""The test-only custom node package extends the pack whichever of the two ComfyUI imports first.

ComfyUI imports custom node folders in directory order, so both orders happen. Each order runs in
a fresh interpreter that imports the folders the way ComfyUI's ``load_custom_node`` does (module
name = the folder's path, the folder as its search location), without ComfyUI itself.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from comfy_server import PACK_FOLDER, REPO_ROOT, TEST_NODES_DIR

LOADER = r"""
import importlib.util, json, os, sys
nodes_dir, order = sys.argv[1], sys.argv[2].split(",")
for folder in order:
    path = os.path.join(nodes_dir, folder)
    name = path.replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
pack = sys.modules[os.path.join(nodes_dir, order[0] if order[0] != "selva_test_variants" else order[1]).replace(".", "_x_")]
loader = pack.NODE_CLASS_MAPPINGS["SelvaModelLoader"]
variants = loader.INPUT_TYPES()["required"]["variant"][0]
copies = [n for n in sys.modules if n.endswith(".selva.variants") or n == "comfyui_selva.selva.variants"]
print(json.dumps({"variants": list(variants),
                  "one_copy": len({id(sys.modules[n]) for n in copies}) == 1}))
"""


@pytest.mark.parametrize("order", [(PACK_FOLDER, "selva_test_variants"),
                                   ("selva_test_variants", PACK_FOLDER)])
def test_tiny_variants_registered_in_either_import_order(tmp_path, order):
    nodes = tmp_path / "custom_nodes"
    nodes.mkdir()
    (nodes / PACK_FOLDER).symlink_to(REPO_ROOT, target_is_directory=True)
    (nodes / "selva_test_variants").symlink_to(TEST_NODES_DIR / "selva_test_variants",
                                               target_is_directory=True)
    out = subprocess.run([sys.executable, "-c", LOADER, str(nodes), ",".join(order)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"small_16k", "tiny_16k", "tiny_44k"} <= set(result["variants"])
    assert result["one_copy"], "the tiny variants went into a second copy of the pack"
