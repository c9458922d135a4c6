"""What is in a dataset: per clip duration, loudness, peak, clipping, silence, prompt; flags.

Works on any dataset the reader reads (made with the Feature Extractor, with prepare-dataset or
the From Folder node), so a user sees before training that half the clips are silent, clipped,
0.3 s long, or hold audio that does not match their features.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..hooks import Hooks, or_default
from ..train.audio_files import read_audio
from ..train.files import atomic_write, write_json, write_text
from .measure import audio_stats, features_header
from .reader import read_dataset

log = logging.getLogger(__name__)

REPORT_JSON = "dataset_report.json"
REPORT_TABLE = "dataset_report.md"
REPORT_IMAGE = "dataset_report.png"


@dataclass
class ReportOptions:
    min_seconds: float = field(default=1.0, metadata={"help": "clips shorter than this are flagged too short"})
    silent_lufs: float = field(default=-50.0, metadata={"help": "clips quieter than this are flagged silent"})
    max_silent_fraction: float = field(default=0.9, metadata={
        "help": "clips whose 50 ms frames are silent for more than this fraction are flagged silent"})
    max_mismatch_seconds: float = field(default=0.1, metadata={
        "help": "audio and features durations differing by more than this are flagged"})


@dataclass
class ClipReport:
    id: str
    duration: float  # of the audio file, seconds
    features_duration: Optional[float]
    loudness_lufs: Optional[float]  # None = silent / unmeasurable
    peak_dbfs: Optional[float]  # None = all zeros
    clipped_samples: int
    silent_fraction: float
    prompt: str
    flags: list[str]


@dataclass
class DatasetReport:
    data_dir: Path
    clips: list[ClipReport]

    def counts(self) -> dict[str, int]:
        return dict(Counter(f for c in self.clips for f in c.flags))

    def to_json(self) -> dict:
        return {"format": "selva-dataset-report", "version": 1, "data_dir": str(self.data_dir),
                "clips": [asdict(c) for c in self.clips], "flag_counts": self.counts()}


def _flags(stats: dict, features_duration: Optional[float], opts: ReportOptions) -> list[str]:
    flags = []
    loud = stats["loudness_lufs"]
    if loud is None or loud < opts.silent_lufs or stats["silent_fraction"] > opts.max_silent_fraction:
        flags.append("silent")
    if stats["clipped_samples"] > 0:
        flags.append("clipped")
    if stats["duration"] < opts.min_seconds:
        flags.append("too short")
    if features_duration is not None and abs(stats["duration"] - features_duration) > opts.max_mismatch_seconds:
        flags.append("duration mismatch")
    return flags


def build_report(data_dir: Path, opts: Optional[ReportOptions] = None,
                 hooks: Optional[Hooks] = None) -> DatasetReport:
    """Measure every clip of the dataset (read by the one reader)."""
    opts = opts or ReportOptions()
    hooks = or_default(hooks)
    files = read_dataset(Path(data_dir), need_audio=False)
    clips = []
    for i, clip in enumerate(files, 1):
        header = features_header(clip.features_path)
        prompt = clip.caption if clip.caption is not None else str(header.get("prompt", ""))
        fdur = float(header["duration"]) if "duration" in header else None
        if clip.audio_path is None:
            clips.append(ClipReport(clip.stem, 0.0, fdur, None, None, 0, 1.0, prompt, ["no audio"]))
        else:
            wave, rate = read_audio(clip.audio_path)
            stats = audio_stats(wave, rate)
            clips.append(ClipReport(clip.stem, round(stats["duration"], 4), fdur, stats["loudness_lufs"],
                                    stats["peak_dbfs"], stats["clipped_samples"], stats["silent_fraction"],
                                    prompt, _flags(stats, fdur, opts)))
        hooks.step("report", i, len(files))
    return DatasetReport(Path(data_dir), clips)


def _fmt(value: Optional[float], spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table_text(report: DatasetReport) -> str:
    """A Markdown table, one row per clip, then the flag counts."""
    lines = [f"# Dataset report: {report.data_dir}", "",
             "| clip | seconds | features s | LUFS | peak dBFS | clipped | silent | flags | prompt |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in report.clips:
        prompt = c.prompt.replace("|", "/").replace("\n", " ")
        lines.append(f"| {c.id} | {c.duration:.2f} | {_fmt(c.features_duration, '.2f')} | "
                     f"{_fmt(c.loudness_lufs)} | {_fmt(c.peak_dbfs)} | {c.clipped_samples} | "
                     f"{c.silent_fraction:.0%} | {', '.join(c.flags) or 'ok'} | {prompt} |")
    counts = report.counts()
    flagged = sum(1 for c in report.clips if c.flags)
    lines += ["", f"{len(report.clips)} clip(s), {flagged} flagged"
              + (": " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if counts else ".")]
    return "\n".join(lines) + "\n"


def report_image(report: DatasetReport):
    """A PIL image: histograms of duration, loudness, peak and silent fraction, flags in the title."""
    import io

    from matplotlib.figure import Figure
    from PIL import Image

    fig = Figure(figsize=(9, 6.5), dpi=100)
    series = [("duration (s)", [c.duration for c in report.clips]),
              ("integrated loudness (LUFS)", [c.loudness_lufs for c in report.clips if c.loudness_lufs is not None]),
              ("peak (dBFS)", [c.peak_dbfs for c in report.clips if c.peak_dbfs is not None]),
              ("silent fraction", [c.silent_fraction for c in report.clips])]
    for k, (title, values) in enumerate(series, 1):
        ax = fig.add_subplot(2, 2, k)
        if values:
            ax.hist(values, bins=min(20, max(len(values), 1)), color="#4a7fb5")
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("clips", fontsize=8)
    counts = report.counts()
    flagged = sum(1 for c in report.clips if c.flags)
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no problems found"
    fig.suptitle(f"{report.data_dir.name}: {len(report.clips)} clips, {flagged} flagged ({summary})",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def write_report(report: DatasetReport, out_dir: Optional[Path] = None) -> tuple[Path, Any]:
    """``dataset_report.json``, ``.md`` and ``.png`` into ``out_dir`` (default: the dataset
    folder); returns the table's path and the image. Only these three files are (re)written."""
    out_dir = Path(out_dir) if out_dir else report.data_dir
    write_json(out_dir / REPORT_JSON, report.to_json())
    table = write_text(out_dir / REPORT_TABLE, table_text(report))
    image = report_image(report)
    atomic_write(out_dir / REPORT_IMAGE, lambda p: image.save(p, format="PNG"))
    log.info("Dataset report: %s", table)
    return table, image
