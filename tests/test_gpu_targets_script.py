"""benchmarks/gpu_targets.sh: the guards that keep it from deleting or half-running anything.

The measurement itself needs a GPU (and its bundle needs the network); what runs here is what
happens before either: the script replaces its bundle folder as a whole, so it must refuse any
folder git does not ignore, and it must stop with a clear message when there is no bundle.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_targets.sh"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def _fake_sources(tmp_path: Path) -> dict[str, str]:
    """A parity kit and an official source export, as far as the script checks them."""
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "make_fake_weights.py").write_text("")
    ref = tmp_path / "ref" / "selva" / "model"
    ref.mkdir(parents=True)
    (ref / "networks_generator.py").write_text("")
    return {"PARITY_KIT": str(kit), "SELVA_REF_SRC": str(tmp_path / "ref")}


def test_usage_error_names_the_subcommands():
    out = _run()
    assert out.returncode == 2
    assert "bundle|run" in out.stderr


def test_bundle_refuses_a_folder_git_does_not_ignore(tmp_path):
    # a folder of the checkout that git would commit (a probe, so a broken guard costs nothing)
    target = REPO / "tests" / f"gpu_bundle_probe_{os.getpid()}"
    target.mkdir()
    try:
        (target / "keep.txt").write_text("user file")
        out = _run("bundle", SELVA_GPU_BUNDLE=str(target.relative_to(REPO)), **_fake_sources(tmp_path))
        assert out.returncode == 1
        assert "not git-ignored" in out.stderr
        assert (target / "keep.txt").read_text() == "user file"
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_bundle_checks_its_sources_before_touching_the_bundle(tmp_path):
    bundle = REPO / ".gpu-bundle"
    existed = bundle.exists()
    out = _run("bundle", PARITY_KIT=str(tmp_path / "no-kit"), SELVA_REF_SRC=str(tmp_path / "no-ref"))
    assert out.returncode == 1
    assert "no parity kit" in out.stderr
    assert bundle.exists() == existed


def test_run_without_a_bundle_says_how_to_make_one(tmp_path):
    out = _run("run", SELVA_GPU_BUNDLE=str(tmp_path / "missing"), SELVA_WORK=str(tmp_path / "work"))
    assert out.returncode == 1
    assert "gpu_targets.sh bundle" in out.stderr and "copy it here" in out.stderr
    assert not (tmp_path / "work").exists()  # stopped before writing anything
