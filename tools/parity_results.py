"""The ours-side bookkeeping both metric parity tools share (``metrics_parity.py``,
``clap_parity.py``): time and keep our run beside the reference's in WORK, read both back (a
``--compare-only`` run reads what an earlier run left), and print one scalar's comparison."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np


def run_and_keep_ours(work: Path, run_ours: Callable[[Path], tuple[dict, dict]]) -> None:
    """Run our side on WORK's inputs and keep its numbers (ours.json) and arrays (ours.npz)."""
    start = time.time()
    ours, arrays = run_ours(work)
    print(f"ours: {time.time() - start:.0f} s")
    np.savez(work / "ours.npz", **arrays)
    (work / "ours.json").write_text(json.dumps(ours, indent=2))


def read_both(work: Path) -> tuple[dict, dict, dict, dict]:
    """(ours, ours_arrays, ref, ref_arrays) as both sides left them in WORK."""
    return (json.loads((work / "ours.json").read_text()), dict(np.load(work / "ours.npz")),
            json.loads((work / "ref.json").read_text()), dict(np.load(work / "ref.npz")))


def scalar_agrees(name: str, ref: float, ours: float, rtol: float) -> bool:
    """Print the two values and their relative difference; whether it is within ``rtol``."""
    rel = abs(ours - ref) / max(abs(ref), 1e-12)
    print(f"{name:18s} reference {ref:.8g}  ours {ours:.8g}  rel {rel:.2e}  {'ok' if rel <= rtol else 'DIFFERS'}")
    return rel <= rtol
