"""CI's rule: with SELVA_REQUIRE_COMFYUI=1 (set by .ci/run), a skipped real-ComfyUI test fails.

Each case runs pytest in a fresh process on a small test folder whose conftest takes the hooks
from tests/conftest.py, so the rule is checked without starting ComfyUI.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CONFTEST = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("selva_tests_conftest", {str(TESTS / "conftest.py")!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
pytest_configure = module.pytest_configure
pytest_make_collect_report = module.pytest_make_collect_report
pytest_runtest_makereport = module.pytest_runtest_makereport
"""
CASES = {
    "test_comfyui_skips.py": """
        import pytest

        def test_skipped():
            pytest.skip("set COMFYUI_DIR")

        @pytest.mark.allow_skip
        def test_allowed():
            pytest.skip("needs real weights")

        def test_no_browser():
            pytest.skip("[browser] no Chromium found")
        """,
    "test_comfyui_module.py": """
        import pytest
        pytest.importorskip("selva_no_such_module")
        """,
    "test_other.py": """
        import pytest

        def test_unit_skip():
            pytest.skip("not an integration test")
        """,
}


def _run(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for name, body in CASES.items():
        (tmp_path / name).write_text(textwrap.dedent(body))
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("SELVA_REQUIRE")}
    run_env.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           "-p", "no:randomly", "--continue-on-collection-errors", str(tmp_path)], cwd=tmp_path, env=run_env,
                          capture_output=True, text=True, timeout=300)


def _outcomes(out: str) -> dict[str, str]:
    """'test_x' -> PASSED / FAILED / SKIPPED / ERROR from pytest's -rA summary."""
    result = {}
    for line in out.splitlines():
        parts = line.split(" ", 1)
        if parts[0] in ("PASSED", "FAILED", "SKIPPED", "ERROR") and len(parts) > 1:
            result[parts[1]] = parts[0]
    return result


# test name -> its skip reason: pytest's summary names a failed test, and a skip by its reason
REASONS = {"test_skipped": "set COMFYUI_DIR", "test_allowed": "needs real weights",
           "test_no_browser": "[browser] no Chromium found",
           "test_unit_skip": "not an integration test"}


def _find(outcomes: dict[str, str], test: str) -> str:
    hits = [v for k, v in outcomes.items() if f"::{test} " in k or k.endswith(REASONS[test])]
    assert len(hits) == 1, (test, outcomes)
    return hits[0]


def test_skips_are_plain_skips_without_the_rule(tmp_path):
    out = _run(tmp_path)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "failed" not in out.stdout.splitlines()[-1]


@pytest.mark.parametrize("browser", ["0", "1"])
def test_integration_skips_fail_under_the_rule(tmp_path, browser):
    out = _run(tmp_path, SELVA_REQUIRE_COMFYUI="1", SELVA_REQUIRE_BROWSER=browser)
    assert out.returncode == 1, out.stdout[-3000:]
    got = _outcomes(out.stdout)
    assert _find(got, "test_skipped") == "FAILED"
    assert _find(got, "test_allowed") == "SKIPPED"
    assert _find(got, "test_unit_skip") == "SKIPPED"
    assert _find(got, "test_no_browser") == ("FAILED" if browser == "1" else "SKIPPED")
    assert "test_comfyui_module.py skipped although SELVA_REQUIRE_COMFYUI=1" in out.stdout
