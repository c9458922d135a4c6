"""Lets the scripts in this folder run from a checkout: ``selva`` and ``bigvgan`` are imported
from the repository root (one level up)."""
from __future__ import annotations

import sys
from pathlib import Path


def run(command: str) -> int:
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from selva.cli import main

    return main([command, *sys.argv[1:]])
