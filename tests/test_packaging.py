"""What the ComfyUI Registry and ComfyUI Manager read: pyproject.toml, .comfyignore, the images."""
from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RAW_PREFIX = "https://raw.githubusercontent.com/"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_lines(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def _normalise(requirement: str) -> str:
    # PEP 503 names: case, "-", "_" and "." are the same; spaces around the specifier do not count.
    name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", requirement).groups()
    return re.sub(r"[-_.]+", "-", name).lower() + spec.replace(" ", "")


def test_dependencies_are_the_requirements():
    # ComfyUI Manager installs requirements.txt, the Registry reads pyproject.toml: the same
    # packages must reach users either way.
    from_requirements = sorted(_normalise(r) for r in _requirement_lines(ROOT / "requirements.txt"))
    from_pyproject = sorted(_normalise(r) for r in _pyproject()["project"]["dependencies"])
    assert from_pyproject == from_requirements
    assert "matplotlib>=3.7" in from_pyproject and "nnaudio>=0.3.2" in from_pyproject


def test_registry_fields():
    project = _pyproject()["project"]
    comfy = _pyproject()["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] == "ComfyUI-SelVA"
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])
    # The accelerators ComfyUI's own parser (comfy_config/config_parser.py) accepts; one unknown
    # value makes it drop them all.
    accepted = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                "GPU :: Apple Metal"}
    environments = [c.removeprefix("Environment :: ") for c in project["classifiers"]
                    if c.startswith("Environment ::")]
    assert environments and set(environments) <= accepted
    repository = project["urls"]["Repository"].removeprefix("https://github.com/")
    for key, size_limit in (("Icon", (800, 400)), ("Banner", (1600, 400))):
        url = comfy[key]
        # The image the URL shows once pushed is the one in this checkout.
        assert url.startswith(f"{RAW_PREFIX}{repository}/main/"), url
        path = ROOT / url.removeprefix(f"{RAW_PREFIX}{repository}/main/")
        assert path.is_file(), f"{key} points to {path}, which is not in the repository"
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width <= size_limit[0] and image.height <= size_limit[1]


def _ignored(path: str, patterns: list[str]) -> bool:
    # The subset of gitignore syntax .comfyignore uses: "folder/" and "*.suffix" / plain names.
    for pattern in patterns:
        if pattern.endswith("/"):
            if path.startswith(pattern) or f"/{pattern}" in f"/{path}":
                return True
        elif fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern):
            return True
    return False


def test_comfyignore_leaves_out_development_files_only():
    patterns = _requirement_lines(ROOT / ".comfyignore")
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    shipped = [f for f in files if not _ignored(f, patterns)]
    left_out = [f for f in files if _ignored(f, patterns)]
    for folder in ("tests/", "benchmarks/", "tools/", ".ci/"):
        assert not [f for f in shipped if f.startswith(folder)], folder
    assert any(f.startswith("tests/data/") for f in left_out)
    # What users need is all shipped.
    for needed in ("__init__.py", "requirements.txt", "pyproject.toml", "README.md", "LICENSE"):
        assert needed in shipped
    for folder in ("nodes/", "selva/", "bigvgan/", "workflows/", "web/", "training/", "docs/"):
        assert not [f for f in left_out if f.startswith(folder)], folder


def test_readme_is_for_users_and_keeps_the_ci_commands():
    # The developers' section opens with the two commands .ci/run repeats: install, then test.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 400
    section = readme.split("\n## For developers\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert block[0].startswith("python3 -m venv .venv && . .venv/bin/activate && ")
    assert "pip install -r requirements.txt -r requirements-test.txt" in block[0]
    assert block[1] == "python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    torch_pins = re.search(r"pip install (torch==\S+ torchvision==\S+)", block[0]).group(1)
    assert f"pip install -q {torch_pins}" in ci
    assert "pip install -q -r requirements.txt -r requirements-test.txt" in ci
    assert "\npython -m pytest -q\n" in ci
    # Users read what it does and how to install before anything for developers.
    assert readme.index("## Install") < readme.index("## Quick start") < readme.index("## For developers")


def test_readme_shows_every_template_with_its_thumbnail():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for workflow in sorted((ROOT / "workflows").glob("*.json")):
        name = workflow.stem
        assert f"**{name}**" in readme, f"README's template table lacks {name}"
        thumbnail = "workflows/" + name.replace(" ", "%20") + ".jpg"
        assert f'<img src="{thumbnail}"' in readme, f"README lacks the thumbnail of {name}"
        assert workflow.with_suffix(".jpg").is_file()
