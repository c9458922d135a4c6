"""The rows of a batch: every video of a folder, or the lines of a manifest (.csv / .jsonl).

A row is one clip to make audio for. Its ``name`` (the output files' stem) defaults to the
video's stem; when stems collide, each colliding row gets a suffix derived from what the row is
(its path and settings), so the same input gets the same name on every run, whatever else the
folder or manifest holds.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SelvaError

# What a folder scan picks up (lower-case suffixes); other files are ignored.
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
    ".flv", ".wmv", ".3gp", ".ogv", ".mxf"})
MANIFEST_COLUMNS = ("video", "prompt", "negative_prompt", "seed", "start", "duration", "name")
_NAME_FORBIDDEN = set('/\\:*?"<>|')


@dataclass(frozen=True)
class RowDefaults:
    """The command line's (or node's) values, used where a row gives none."""

    prompt: str = field(default="", metadata={"help": "the sound to generate"})
    negative_prompt: str = field(default="", metadata={"help": "sounds to steer away from"})
    seed: int = field(default=42, metadata={"help": "noise seed"})
    start: float = field(default=0.0, metadata={"help": "seconds into each video"})
    duration: float = field(default=8.0, metadata={"help": "seconds from start (0 = to the end)"})


@dataclass(frozen=True)
class Row:
    index: int  # position in the whole batch (stable: folder order or manifest order)
    video: Path
    name: str
    prompt: str
    negative_prompt: str
    seed: int
    start: float
    duration: float
    source: str  # where the row came from, for messages: "clips/a.mp4" or "manifest.csv line 3"


def rows_from_folder(folder: Path, defaults: RowDefaults) -> list[Row]:
    """Every file with a video extension under ``folder`` (recursively), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SelvaError(f"Video folder not found: {folder}")
    videos = sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS),
                    key=lambda p: p.relative_to(folder).as_posix())
    if not videos:
        raise SelvaError(f"{folder} holds no video files (looked for {', '.join(sorted(VIDEO_EXTENSIONS))}).")
    raw = [dict(video=p, source=p.relative_to(folder).as_posix(), name=None, prompt=defaults.prompt,
                negative_prompt=defaults.negative_prompt, seed=defaults.seed, start=defaults.start,
                duration=defaults.duration) for p in videos]
    return _with_names(raw)


def rows_from_manifest(path: Path, defaults: RowDefaults) -> list[Row]:
    """The rows of a ``.csv`` (with a header line) or ``.jsonl`` manifest.

    ``video`` paths are relative to the manifest's folder (absolute ones are kept). Per-row
    values override ``defaults``; an empty CSV cell means "use the default".
    """
    path = Path(path)
    if not path.is_file():
        raise SelvaError(f"Manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        entries = _read_csv(path)
    elif suffix == ".jsonl":
        entries = _read_jsonl(path)
    else:
        raise SelvaError(f"{path}: a manifest must be a .csv file (with a header line) or a .jsonl file.")
    if not entries:
        raise SelvaError(f"{path} lists no rows.")
    raw = [_parse_entry(values, f"{path.name} line {line}", path.parent, defaults)
           for line, values in entries]
    return _with_names(raw)


def _read_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        _check_columns(header, f"{path.name} line 1 (the header)")
        entries = []
        for values in reader:
            if None in values:  # more cells than header columns
                raise SelvaError(f"{path.name} line {reader.line_num}: more cells than the header has "
                                 f"columns ({len(header)}).")
            if not any((v or "").strip() for v in values.values()):
                continue  # blank line
            entries.append((reader.line_num, {k: v for k, v in values.items() if (v or "").strip() != ""}))
    return entries


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    entries = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise SelvaError(f"{path.name} line {line}: not valid JSON ({e.msg}).") from None
        if not isinstance(values, dict):
            raise SelvaError(f"{path.name} line {line}: each line must be a JSON object, "
                             f"e.g. {{\"video\": \"clip.mp4\", \"prompt\": \"rain\"}}.")
        _check_columns(list(values), f"{path.name} line {line}")
        entries.append((line, {k: v for k, v in values.items() if v is not None}))
    return entries


def _check_columns(columns: list[str], where: str) -> None:
    unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
    if unknown:
        raise SelvaError(f"{where}: unknown column {unknown[0]!r}; the columns are "
                         f"{', '.join(MANIFEST_COLUMNS)}.")


def _number(values: dict, key: str, default: float, where: str, integer: bool = False) -> Any:
    if key not in values:
        return default
    raw = values[key]
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = int(str(raw).strip()) if integer else float(str(raw).strip())
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise SelvaError(f"{where}: {key} {raw!r} is not {kind}.") from None
    if not integer and not math.isfinite(value):
        raise SelvaError(f"{where}: {key} {raw!r} is not a finite number.")
    if value < 0:
        raise SelvaError(f"{where}: {key} must not be negative, got {raw!r}.")
    return value


def _parse_entry(values: dict, where: str, base: Path, defaults: RowDefaults) -> dict:
    video = str(values.get("video", "")).strip()
    if not video:
        raise SelvaError(f"{where}: the required column 'video' is missing or empty.")
    path = Path(video).expanduser()
    name = values.get("name")
    if name is not None:
        name = str(name).strip()
        if not name or name.startswith(".") or _NAME_FORBIDDEN & set(name):
            raise SelvaError(f"{where}: name {name!r} cannot be a file name (no path separators, "
                             f"no leading dot, none of {''.join(sorted(_NAME_FORBIDDEN))}).")
    return dict(video=path if path.is_absolute() else base / path, source=where, name=name,
                prompt=str(values.get("prompt", defaults.prompt)),
                negative_prompt=str(values.get("negative_prompt", defaults.negative_prompt)),
                seed=_number(values, "seed", defaults.seed, where, integer=True),
                start=_number(values, "start", defaults.start, where),
                duration=_number(values, "duration", defaults.duration, where))


def _identity(entry: dict) -> str:
    """A short digest of what the row is: the same row always gets the same suffix. The seed is
    left out: another seed must not rename (and so redo) rows that were already made."""
    key = json.dumps([str(entry["video"]), entry["prompt"], entry["negative_prompt"],
                      entry["start"], entry["duration"]])
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]


def _with_names(raw: list[dict]) -> list[Row]:
    """Rows with unique names: explicit names must be unique; a stem shared by several rows gets
    a digest of each row's identity (and, for rows that are exact copies, a count)."""
    explicit: dict[str, str] = {}
    for entry in raw:
        if entry["name"] is not None:
            other = explicit.setdefault(entry["name"].lower(), entry["source"])
            if other != entry["source"]:
                raise SelvaError(f"{entry['source']}: name {entry['name']!r} is already used by {other}; "
                                 f"names must be unique.")
    stems = Counter(entry["video"].stem.lower() for entry in raw if entry["name"] is None)
    taken = set(explicit)
    rows = []
    for index, entry in enumerate(raw):
        name = entry["name"]
        if name is None:
            stem = entry["video"].stem
            name = stem
            if stems[stem.lower()] > 1 or stem.lower() in explicit:
                name = f"{stem}-{_identity(entry)}"
            base, n = name, 2
            while name.lower() in taken:  # identical rows: the later copies are counted
                name, n = f"{base}-{n}", n + 1
        taken.add(name.lower())
        rows.append(Row(index=index, video=entry["video"], name=name, prompt=entry["prompt"],
                        negative_prompt=entry["negative_prompt"], seed=int(entry["seed"]),
                        start=float(entry["start"]), duration=float(entry["duration"]),
                        source=entry["source"]))
    return rows
