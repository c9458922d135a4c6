"""Test set-up shared by every test module.

The pack is imported the way ComfyUI imports a custom node: the repository folder is a package
and everything inside it uses relative imports. Here it is registered as ``comfyui_selva``
*without* running the root ``__init__`` (that one builds the ComfyUI node tables; the node tests
load it separately, exactly as ComfyUI does), so the core tests import
``comfyui_selva.selva...`` and ``comfyui_selva.bigvgan...``.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_selva"


def _register_pack() -> None:
    if PACK_NAME in sys.modules:
        return
    pack = types.ModuleType(PACK_NAME)
    pack.__path__ = [str(REPO_ROOT)]
    pack.__file__ = str(REPO_ROOT / "__init__.py")
    pack.__spec__ = importlib.util.spec_from_loader(PACK_NAME, loader=None, is_package=True)
    pack.__spec__.submodule_search_locations = [str(REPO_ROOT)]
    sys.modules[PACK_NAME] = pack


_register_pack()
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config):
    import torch

    # The test networks are tiny: one thread avoids hand-off overhead that dominates their run
    # time on a busy machine, and makes float sums come out the same on every machine.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A tiny models folder (variants tiny_16k and tiny_44k) in the released layout, per session."""
    from node_helpers import tiny_models_dir

    return tiny_models_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def model(models_dir):
    """The tiny_16k pipeline as the SelVA Model Loader node returns it."""
    from comfy_pack import pack_module
    from node_helpers import env_for_models, run_node

    with pytest.MonkeyPatch.context() as mp:
        env_for_models(mp, models_dir)
        (pipe,) = run_node("SelvaModelLoader", variant="tiny_16k", precision="fp32",
                           offload_strategy="auto")
    yield pipe
    pack_module("nodes.loader").clear_cache()
