"""Keep a copy of workflows as users have them today, to test that later versions still load them.

ComfyUI saves a node's widget values by position, so a widget input inserted before existing ones
shifts every later value in users' saved workflows. This copies each given workflow into
``tests/data/saved_workflows/`` (as ``<name>.json``) together with ``<name>.widgets.json``: for
each of the pack's node types in it, the widget names in the order the pack declares them now.
``tests/test_saved_workflows.py`` then checks that every saved value still lands on the widget
of the same name.

    python tools/snapshot_workflow.py "workflows/My Workflow.json" [more.json ...]

An existing snapshot is never overwritten (it records what older saved files hold): give the
copy another name with ``--as NAME`` (one workflow at a time).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SAVED_DIR = REPO_ROOT / "tests" / "data" / "saved_workflows"
sys.path.insert(0, str(REPO_ROOT / "tests"))

from comfy_pack import load_pack, widget_names  # noqa: E402


def _write_new(path: Path, text: str) -> None:
    """Write atomically, refusing to replace an existing snapshot."""
    if path.exists():
        raise SystemExit(f"{path} exists: snapshots are never overwritten (use --as NAME)")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def snapshot(workflow_path: Path, name: str) -> tuple[Path, Path]:
    workflow = json.loads(workflow_path.read_text(encoding="utf-8"))
    classes = load_pack().NODE_CLASS_MAPPINGS
    order = {t: widget_names(classes[t]) for t in sorted({n["type"] for n in workflow["nodes"]})
             if t in classes}
    SAVED_DIR.mkdir(parents=True, exist_ok=True)
    copy, widgets = SAVED_DIR / f"{name}.json", SAVED_DIR / f"{name}.widgets.json"
    for p in (copy, widgets):
        if p.exists():
            raise SystemExit(f"{p} exists: snapshots are never overwritten (use --as NAME)")
    _write_new(copy, workflow_path.read_text(encoding="utf-8"))
    _write_new(widgets, json.dumps(order, indent=2) + "\n")
    return copy, widgets


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workflows", nargs="+", type=Path)
    ap.add_argument("--as", dest="name", help="name of the copy (default: the file's own)")
    args = ap.parse_args(argv)
    if args.name and len(args.workflows) > 1:
        ap.error("--as takes one workflow")
    for path in args.workflows:
        for out in snapshot(path, args.name or path.stem):
            print(out.relative_to(REPO_ROOT))


if __name__ == "__main__":
    main()
