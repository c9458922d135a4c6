"""Test set-up shared by every test module.

The pack is imported the way ComfyUI imports a custom node: the repository folder is a package
and everything inside it uses relative imports. Here it is registered as ``comfyui_selva``
*without* running the root ``__init__`` (that one builds the ComfyUI node tables; the node tests
load it separately, exactly as ComfyUI does), so the core tests import
``comfyui_selva.selva...`` and ``comfyui_selva.bigvgan...``.
"""
from __future__ import annotations

import importlib.util
import os
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
# bf16 tests run in bf16 on any CPU (selva/precision.py: explicit bf16 would otherwise become
# fp32 on CPUs that emulate it); tests of that choice clear it.
os.environ.setdefault("SELVA_ALLOW_EMULATED_BF16", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config):
    import torch

    config.addinivalue_line("markers", "allow_skip: this integration test may skip even in CI")

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


# ------------------------------------------------------------------ real ComfyUI (integration)
# One ComfyUI server per pytest session, shared by every tests/test_comfyui_*.py module.
# With SELVA_REQUIRE_COMFYUI=1 (set by .ci/run) a skipped integration test fails the run.
REQUIRE_COMFYUI = "SELVA_REQUIRE_COMFYUI"
REQUIRE_BROWSER = "SELVA_REQUIRE_BROWSER"
BROWSER_SKIP_TAG = "[browser]"  # reason prefix of skips allowed when no browser can be had


def _required(name: str) -> bool:
    return os.environ.get(name, "").strip() == "1"


def _skip_reason(longrepr) -> str:
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _must_run(path, reason: str) -> bool:
    """Whether a skip of something in ``path`` breaks the CI rule that integration tests run."""
    if not _required(REQUIRE_COMFYUI) or not Path(str(path)).name.startswith("test_comfyui_"):
        return False
    return not (BROWSER_SKIP_TAG in reason and not _required(REQUIRE_BROWSER))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole integration module skipped at import (importorskip, allow_module_level)."""
    outcome = yield
    report = outcome.get_result()
    path = getattr(collector, "path", None)
    if report.skipped and path is not None and _must_run(path, _skip_reason(report.longrepr)):
        report.outcome = "failed"
        report.longrepr = (f"{Path(str(path)).name} skipped although {REQUIRE_COMFYUI}=1 requires "
                           f"it to run: {_skip_reason(report.longrepr)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or item.get_closest_marker("allow_skip") is not None:
        return
    reason = _skip_reason(report.longrepr)
    if not _must_run(item.path, reason):
        return
    report.outcome = "failed"
    report.longrepr = (f"integration test skipped although {REQUIRE_COMFYUI}=1 requires it to "
                       f"run: {reason}")


@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    """The ComfyUI checkout named by COMFYUI_DIR (skips, or fails under SELVA_REQUIRE_COMFYUI=1)."""
    value = os.environ.get("COMFYUI_DIR", "")
    if not value or not (Path(value) / "main.py").is_file():
        pytest.skip("set COMFYUI_DIR to a ComfyUI checkout (its requirements installed) to run")
    return Path(value)


@pytest.fixture(scope="session")
def comfy_tiny_models_dir(models_dir, tmp_path_factory) -> Path:
    """The tiny variants' models folder under the file names the test server gives them."""
    import server_tiny

    return server_tiny.write_models_dir(models_dir, tmp_path_factory.mktemp("comfy_tiny_models"))


def _full_models_path() -> Path:
    import full_weights

    return full_weights.cache_root() / f"full-small_16k-{full_weights.cache_key('small_16k')}"


@pytest.fixture(scope="session")
def full_models_dir() -> Path:
    """Full-size random small_16k weights in the released layout (cached across sessions).

    The server registers this folder from the start; asking for the fixture writes it on first
    use (about a minute), so tests that need only the tiny variants never pay for it.
    """
    import full_weights

    path = full_weights.full_models_dir("small_16k")
    assert path == _full_models_path()
    return path


@pytest.fixture(scope="session")
def comfy(comfyui_dir, comfy_tiny_models_dir, tmp_path_factory):
    """One real ComfyUI server for the whole session (see tests/comfy_server.py).

    Model folders: the full-size small_16k cache folder (see ``full_models_dir``) and the tiny
    variants' folder (``tiny_16k`` / ``tiny_44k``), plus ``$SELVA_TEST_MODELS_DIR`` if set.
    """
    from comfy_server import start_server

    folders = [_full_models_path(), comfy_tiny_models_dir]
    if os.environ.get("SELVA_TEST_MODELS_DIR"):  # real weights win over the random ones
        folders.insert(0, Path(os.environ["SELVA_TEST_MODELS_DIR"]))
    server = start_server(comfyui_dir, tmp_path_factory.mktemp("comfy_base"), folders)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def object_info(comfy) -> dict:
    return comfy.object_info()


@pytest.fixture(autouse=True)
def _gradients_stay_on():
    """A test that switches gradients off for the whole process breaks every training test after
    it (in an order-dependent way); fail the test that did it instead."""
    import torch

    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("this test left torch gradients disabled (torch.set_grad_enabled(False) without restoring)")
