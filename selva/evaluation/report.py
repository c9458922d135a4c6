"""``metrics.json`` and ``metrics.png`` of an evaluation (atomic writes; one chart per metric)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..artifacts import atomic_path, write_json


def file_identities(paths: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Each metric network's file: path, size and md5 (the released files' published checksums);
    for a folder (a tokenizer's files), the same for each file in it."""
    from ..weights import md5sum

    def ident(p: Path) -> dict[str, Any]:
        return {"path": str(p), "bytes": p.stat().st_size, "md5": md5sum(p)}

    out: dict[str, dict[str, Any]] = {}
    for k, p in sorted(paths.items()):
        p = Path(p)
        if p.is_dir():
            out[k] = {"path": str(p), "files": {f.name: ident(f) for f in sorted(p.iterdir()) if f.is_file()}}
        else:
            out[k] = ident(p)
    return out


def best_model(data: dict, metric: str) -> Optional[str]:
    """The model with the best mean for ``metric`` (per ``data["directions"]``), None if none scored."""
    sign = -1.0 if data.get("directions", {}).get(metric, "lower") == "higher" else 1.0
    scored = [(sign * r[metric]["mean"], name) for name, r in data["models"].items()
              if metric in r and r[metric]["mean"] is not None]
    return min(scored)[1] if scored else None


def ranking(data: dict, metric: str) -> list[str]:
    """Models from best to worst by ``metric``; unscored models last (a sweep's ranking)."""
    sign = -1.0 if data.get("directions", {}).get(metric, "lower") == "higher" else 1.0
    scored = sorted((sign * r[metric]["mean"], name) for name, r in data["models"].items()
                    if metric in r and r[metric]["mean"] is not None)
    rest = [name for name, r in data["models"].items() if metric not in r or r[metric]["mean"] is None]
    return [name for _, name in scored] + rest


def chart(data: dict) -> np.ndarray:
    """One bar chart per metric, models side by side, the best one marked: (H, W, 3) uint8."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = list(data["directions"])
    models = list(data["models"])
    fig = Figure(figsize=(max(4.0, 1.0 + 0.9 * len(models)) * len(metrics), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        best = best_model(data, metric)
        values = [data["models"][m].get(metric, {}).get("mean") for m in models]
        heights = [0.0 if v is None else v for v in values]
        colors = ["tab:green" if m == best else "tab:gray" for m in models]
        bars = ax.bar(range(len(models)), heights, color=colors)
        for bar, v, m in zip(bars, values, models):
            label = "n/a" if v is None else f"{v:.3g}" + (" *" if m == best else "")
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=8)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels([m if len(m) <= 18 else "..." + m[-15:] for m in models], rotation=30,
                           ha="right", fontsize=8)
        direction = data["directions"][metric]
        ax.set_title(f"{metric} ({direction} is better)", fontsize=10)
    fig.tight_layout()
    fig.canvas.draw()
    return np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])


def written_chart(data: dict) -> np.ndarray:
    """The chart :func:`write` saved for ``data`` (``data["chart"]``), (H, W, 3) uint8: read back
    instead of drawn twice."""
    from PIL import Image

    with Image.open(data["chart"]) as im:
        return np.asarray(im.convert("RGB")).copy()


def write(out_dir: Path, data: dict) -> None:
    """``out_dir/metrics.json`` and ``out_dir/metrics.png`` (replaced atomically: they are ours)."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "metrics.png"
    with atomic_path(png) as tmp:
        Image.fromarray(chart(data)).save(tmp)
    data["best"] = {m: best_model(data, m) for m in data["directions"]}
    data["ranking"] = {m: ranking(data, m) for m in data["directions"]}
    data["chart"] = str(png)
    write_json(out_dir / "metrics.json", data)
