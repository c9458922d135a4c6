"""``results.jsonl``: one line per row, rewritten (atomically) by each run."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from ..artifacts import atomic_path

RESULTS_NAME = "results.jsonl"


@dataclass
class RowResult:
    index: int
    name: str
    video: str
    prompt: str
    seed: int
    status: str  # done | skipped | failed
    error: Optional[str] = None
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("index")  # the line's position says it
        return json.dumps(data, ensure_ascii=False)


def write_results(out_dir: Path, results: Iterable[RowResult]) -> Path:
    """Write every result in row order; readers never see a half-written file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_NAME
    lines = [r.to_json() for r in sorted(results, key=lambda r: r.index)]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def summary_line(results: Iterable[RowResult]) -> str:
    c = Counter(r.status for r in results)
    return f"{c['done']} done, {c['skipped']} skipped, {c['failed']} failed"
