"""A folder of videos -> a training dataset folder, in one call (node and ``prepare-dataset``).

Per video: its audio comes from a clean audio file with the same stem beside it, else from the
video's own sound track; its prompt from a CSV row, a same-stem ``.txt`` caption, or the one
prompt given. Long videos are cut into ``clip_seconds`` clips every ``hop_seconds`` (a last piece
of at least ``MIN_TAIL_SECONDS`` is kept as a shorter clip; a video shorter than one clip gives
one clip of its whole length). Each clip gets ``<id>.npz`` (features) and ``<id>.wav`` (its audio,
cut to exactly the features' span, at the source rate; loudness-normalised when asked), and with
``keep_frames`` ``frames/<id>/`` (the 25 fps frames the sync features saw, as JPEG).

Clips quieter than ``min_loudness_lufs`` are left out before any encoder runs and listed in
``dataset.json`` under ``left_out`` with the reason. ``dataset.json`` is rewritten (atomically)
after every clip, so a cancel keeps every finished clip and running again continues where it
stopped; a bad video is reported under ``failed`` and skipped.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch

from ..audio import loudness
from ..errors import SelvaError
from ..hooks import Hooks, Interrupted, or_default
from ..train.audio_files import read_audio
from ..train.files import write_json, write_wav
from .reader import audio_beside

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts")
INDEX_NAME = "dataset.json"
INDEX_FORMAT = "selva-dataset"
INDEX_VERSION = 2
MIN_TAIL_SECONDS = 1.0


@dataclass
class PrepareOptions:
    """Options of SelVA Dataset From Folder and ``python -m selva prepare-dataset``."""

    videos_dir: Path = field(metadata={"help": "folder of videos"})
    out_dir: Path = field(metadata={"help": "dataset folder to write (or continue)"})
    prompt: str = field(default="", metadata={"help": "one prompt for every video without a CSV "
                                                      "row or caption"})
    csv_path: Optional[Path] = field(default=None, metadata={
        "help": "CSV with a file (or video) column and a prompt (or label) column"})
    captions: bool = field(default=True, metadata={
        "help": "use a same-stem .txt caption beside a video as its prompt"})
    clip_seconds: float = field(default=8.0, metadata={
        "help": "cut long videos into clips this long (8 s: what the models saw)"})
    hop_seconds: float = field(default=0.0, metadata={
        "help": "seconds from one clip's start to the next (0 = clip_seconds, no overlap)"})
    min_loudness_lufs: float = field(default=-50.0, metadata={
        "help": "clips quieter than this (integrated LUFS) are left out; -70 keeps all but silence"})
    target_lufs: Optional[float] = field(default=None, metadata={
        "help": "loudness-normalise each clip's audio to this (BS.1770, never clipping); off by default"})
    keep_frames: bool = field(default=False, metadata={
        "help": "also keep each clip's 25 fps frames as JPEG (frames/<id>/)"})

    def validate(self) -> None:
        if self.clip_seconds <= 0:
            raise SelvaError(f"clip_seconds must be positive, got {self.clip_seconds}.")
        if self.hop_seconds < 0:
            raise SelvaError(f"hop_seconds must be 0 (= clip_seconds) or positive, got {self.hop_seconds}.")


@dataclass
class ClipEntry:
    id: str
    video: str
    audio: str
    features: str
    frames_dir: Optional[str]
    label: str
    duration: float
    start: float
    loudness_lufs: Optional[float] = None  # of the audio as found, before any normalisation
    target_lufs: Optional[float] = None  # what it was normalised to, None = as found


@dataclass
class DatasetIndex:
    clips: list[ClipEntry] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    left_out: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"format": INDEX_FORMAT, "version": INDEX_VERSION,
                "clips": [asdict(c) for c in self.clips], "left_out": self.left_out,
                "failed": self.failed}


_ENTRY_FIELDS = {f.name for f in fields(ClipEntry)}


def read_index(path: Path) -> DatasetIndex:
    """A ``dataset.json``; a clear error for anything else."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / INDEX_NAME
    if not path.is_file():
        raise SelvaError(f"Dataset index {path} does not exist (prepare-dataset and SelVA Dataset "
                         f"From Folder write dataset.json into the dataset folder).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SelvaError(f"{path} is not a dataset index: it is not readable JSON ({e}).") from e
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("clips"), list):
        raise SelvaError(f"{path} is not a dataset index (expected the dataset.json written by "
                         f"prepare-dataset, with format '{INDEX_FORMAT}').")
    try:  # keys a later version added are ignored
        clips = [ClipEntry(**{k: v for k, v in c.items() if k in _ENTRY_FIELDS}) for c in data["clips"]]
    except (TypeError, AttributeError) as e:
        raise SelvaError(f"{path}: a clip entry is malformed ({e}).") from e
    return DatasetIndex(clips, list(data.get("failed", [])), list(data.get("left_out", [])))


def read_prompt_csv(path: Path) -> dict[str, str]:
    """Video file name (or stem) -> prompt from a CSV with a file/video and a prompt/label column."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SelvaError(f"The prompts CSV {path} does not exist.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SelvaError(f"{path} holds no rows.")
    cols = {c.lower().strip(): c for c in rows[0]}
    file_col = cols.get("file") or cols.get("video") or cols.get("filename")
    text_col = cols.get("prompt") or cols.get("label") or cols.get("caption")
    if not file_col or not text_col:
        raise SelvaError(f"{path} needs a 'file' (or 'video') column and a 'prompt' (or 'label') "
                         f"column; it has {', '.join(rows[0])}.")
    return {Path(r[file_col].strip()).stem: r[text_col].strip() for r in rows if r.get(file_col)}


def video_duration(path: Path) -> float:
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise SelvaError(f"{path} has no video stream.")
            s = c.streams.video[0]
            if s.duration is not None and s.time_base is not None:
                return float(s.duration * s.time_base)
            if c.duration is not None:
                return c.duration / 1_000_000
    except av.FFmpegError as e:
        raise SelvaError(f"Could not open the video {path}: {e}") from e
    raise SelvaError(f"Cannot tell how long {path} is.")


def clip_spans(duration: float, clip_seconds: float, hop_seconds: float = 0.0) -> list[tuple[float, float]]:
    """(start, length) of each clip: full clips every ``hop_seconds`` (0 = ``clip_seconds``),
    plus a last, shorter clip when at least MIN_TAIL_SECONDS are left uncovered; a video shorter
    than one clip is one clip of its whole length."""
    if clip_seconds <= 0:
        raise SelvaError(f"clip_seconds must be positive, got {clip_seconds}.")
    hop = hop_seconds if hop_seconds > 0 else clip_seconds
    spans: list[tuple[float, float]] = []
    start = 0.0
    while start + clip_seconds <= duration + 1e-6:
        spans.append((round(start, 6), clip_seconds))
        start += hop
    if not spans:
        return [(0.0, duration)] if duration > 0 else []
    tail_start = spans[-1][0] + hop
    if duration - (spans[-1][0] + clip_seconds) >= MIN_TAIL_SECONDS:  # enough left uncovered
        spans.append((round(tail_start, 6), duration - tail_start))
    return spans


def _prompt_for(video: Path, opts: PrepareOptions, table: dict[str, str]) -> str:
    if video.stem in table:
        return table[video.stem]
    caption = video.with_suffix(".txt")
    if opts.captions and caption.is_file() and caption.read_text(encoding="utf-8").strip():
        return caption.read_text(encoding="utf-8").strip()
    if opts.prompt.strip():
        return opts.prompt.strip()
    raise SelvaError(f"No prompt for {video.name}: give a prompt, a CSV row for it, or a "
                     f"{video.stem}.txt caption beside it.")


def _save_frames(folder: Path, frames_thwc_u8: torch.Tensor) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames_thwc_u8):
        Image.fromarray(frame.numpy()).save(folder / f"{i:05d}.jpg", quality=92)


def _audio_of(video: Path) -> tuple[torch.Tensor, int, str]:
    clean = audio_beside(video)
    source = clean or video
    try:
        wave, rate = read_audio(source)
    except SelvaError as e:
        if clean is None and "no audio stream" in str(e):
            raise SelvaError(f"{video.name} has no sound track and no same-name audio file "
                             f"(e.g. {video.stem}.wav) beside it.") from e
        raise
    return wave, rate, source.name


def list_videos(videos_dir: Path) -> list[Path]:
    videos_dir = Path(videos_dir).expanduser()
    if not videos_dir.is_dir():
        raise SelvaError(f"The videos folder {videos_dir} does not exist.")
    videos = sorted(p for p in videos_dir.iterdir()
                    if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith("."))
    if not videos:
        raise SelvaError(f"No videos in {videos_dir} (looked for {', '.join(VIDEO_EXTENSIONS)}).")
    return videos


def prepare_dataset(pipe: Any, opts: PrepareOptions, hooks: Optional[Hooks] = None) -> DatasetIndex:
    """Make (or continue) the dataset; returns the index as written.

    ``pipe`` is a loaded :class:`~selva.pipeline.SelvaPipeline` (its ``encode``)."""
    hooks = or_default(hooks)
    opts.validate()
    out = Path(opts.out_dir).expanduser()
    videos = list_videos(opts.videos_dir)
    table = read_prompt_csv(opts.csv_path) if opts.csv_path else {}
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX_NAME
    index = read_index(index_path) if index_path.is_file() else DatasetIndex()
    done = {c.id for c in index.clips if (out / c.features).is_file() and (out / c.audio).is_file()}
    index.clips = [c for c in index.clips if c.id in done]
    index.failed, index.left_out = [], []  # both are decided again (cheaply, before encoding)

    plan: list[tuple[Path, list[tuple[float, float]]]] = []
    for video in videos:
        try:
            plan.append((video, clip_spans(video_duration(video), opts.clip_seconds, opts.hop_seconds)))
        except SelvaError as e:
            log.warning("Skipping %s: %s", video.name, e)
            index.failed.append({"video": str(video), "error": str(e)})
    total = sum(len(spans) for _, spans in plan)
    finished = 0

    def save_index() -> None:
        index.clips.sort(key=lambda c: c.id)
        write_json(index_path, index.to_json())

    for video, spans in plan:
        ids = [f"{video.stem}_{i:03d}" for i in range(len(spans))]
        try:
            if all(i in done for i in ids):
                finished += len(ids)
                hooks.step("clips", finished, total)
                continue
            prompt = _prompt_for(video, opts, table)
            wave, rate, source = _audio_of(video)
            for clip_id, (start, length) in zip(ids, spans):
                hooks.check()
                if clip_id not in done:
                    _make_clip(pipe, _Clip(video, clip_id, start, length, prompt, source), wave, rate,
                               opts, out, index, hooks)
                    if index.clips and index.clips[-1].id == clip_id:
                        done.add(clip_id)
                    save_index()
                finished += 1
                hooks.step("clips", finished, total)
        except Interrupted:
            save_index()
            raise
        except Exception as e:  # one bad video never ends the run
            log.warning("Skipping %s: %s", video.name, e)
            index.failed.append({"video": str(video), "error": str(e)})
            save_index()
    save_index()
    log.info("Dataset %s: %d clips, %d left out, %d video(s) failed", out, len(index.clips),
             len(index.left_out), len(index.failed))
    return index


@dataclass(frozen=True)
class _Clip:
    video: Path
    id: str
    start: float
    length: float
    prompt: str
    audio_source: str  # file name the audio came from


def _make_clip(pipe: Any, clip: _Clip, wave: torch.Tensor, rate: int, opts: PrepareOptions, out: Path,
               index: DatasetIndex, hooks: Hooks) -> None:
    """Encode and write one clip, or list it under ``left_out`` (before any encoder runs)."""
    from .. import video as video_ops
    from ..audio import loudness_normalize
    from ..encoding import PreparedInput

    video, clip_id, start, length, prompt, source = (clip.video, clip.id, clip.start, clip.length,
                                                     clip.prompt, clip.audio_source)
    a = int(round(start * rate))
    span = wave[:, a:a + int(round(length * rate))]
    loud = loudness(span, rate)
    if span.shape[-1] == 0:
        reason = f"no audio at {start:.2f} s ({source} is shorter than the video)"
    elif not math.isfinite(loud):
        reason = "silent (loudness below the -70 LUFS gate or too short to measure)"
    elif loud < opts.min_loudness_lufs:
        reason = f"too quiet: {loud:.1f} LUFS < min_loudness_lufs {opts.min_loudness_lufs:g}"
    else:
        reason = ""
    if reason:
        log.info("Leaving out %s: %s", clip_id, reason)
        index.left_out.append({"id": clip_id, "video": str(video), "start": float(start),
                               "duration": float(length), "reason": reason})
        return
    frames = video_ops.decode_video(video, duration=length, start=start)
    feats = pipe.encode(PreparedInput(frames), prompt, hooks)
    # the audio covers exactly the features' span (decoding may end a frame early)
    clip_audio = wave[:, a:a + int(round(float(feats.duration) * rate))]
    if opts.target_lufs is not None:
        clip_audio = loudness_normalize(clip_audio[None], rate, float(opts.target_lufs))[0]
    write_wav(out / f"{clip_id}.wav", clip_audio, rate)
    feats.save(out / f"{clip_id}.npz")  # atomic, and last: the .npz marks the clip done
    frames_dir = None
    if opts.keep_frames:
        frames_dir = f"frames/{clip_id}"
        _save_frames(out / frames_dir, feats.sync_frames_u8)
    index.clips.append(ClipEntry(clip_id, str(video), f"{clip_id}.wav", f"{clip_id}.npz", frames_dir,
                                 prompt, float(feats.duration), float(start),
                                 round(loud, 2), opts.target_lufs))


def dataset_entries(path: Path) -> tuple[Path, list[ClipEntry]]:
    """The clips of a dataset for browsing: from its ``dataset.json`` when it has one, else from
    the one reader (a folder made clip by clip with the Feature Extractor). ``path`` is the
    folder or its ``dataset.json``; returns the folder and the entries (paths relative to it or
    absolute)."""
    from .measure import features_header
    from .reader import read_dataset

    path = Path(path).expanduser()
    folder = path.parent if path.suffix.lower() == ".json" else path
    index_path = path if path.suffix.lower() == ".json" else path / INDEX_NAME
    if index_path.is_file():
        from ..compat.datasets import read_earlier_index

        earlier = read_earlier_index(index_path)  # the earlier pack's array, else ours
        return folder, [ClipEntry(**c) for c in earlier] if earlier is not None else read_index(index_path).clips
    if path.suffix.lower() == ".json" and not folder.is_dir():
        raise SelvaError(f"Dataset index {path} does not exist, nor its folder.")
    entries = []
    for clip in read_dataset(folder, need_audio=False):
        header = features_header(clip.features_path)
        entries.append(ClipEntry(clip.stem, "", str(clip.audio_path or ""), clip.features_path.name, None,
                                 clip.caption if clip.caption is not None else str(header.get("prompt", "")),
                                 float(header.get("duration", 0.0)), float(header.get("start", 0.0))))
    return folder, entries
