"""Turn a folder of videos into a training dataset (``training/prepare_dataset.py``).

Per video: its audio comes from a clean audio file with the same name beside it, else from the
video's own sound track; long videos are cut into ``clip_seconds`` clips (a last piece of at
least ``MIN_TAIL_SECONDS`` is kept as a shorter clip). Each clip gets ``<id>.npz`` (features),
``<id>.wav`` (its audio, at the source rate) and, with ``keep_frames``, ``frames/<id>/`` (the
25 fps frames the sync features saw, as JPEG). ``dataset.json`` indexes every clip and the
videos that failed; it is rewritten (atomically) after each video, so an interrupted run resumes
where it stopped: clips already present are skipped, a bad video is reported and skipped.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..errors import SelvaError
from ..hooks import Hooks, Interrupted, or_default
from .audio_files import AUDIO_EXTENSIONS, read_audio
from .files import write_json, write_wav

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts")
INDEX_NAME = "dataset.json"
INDEX_FORMAT = "selva-dataset"
INDEX_VERSION = 1
MIN_TAIL_SECONDS = 1.0


@dataclass
class PrepareOptions:
    videos_dir: Path
    out_dir: Path
    prompt: str = ""  # one prompt for every video
    csv_path: Optional[Path] = None  # columns: file (or video) and prompt (or label)
    captions: bool = False  # a same-name .txt beside each video
    clip_seconds: float = 8.0
    keep_frames: bool = False


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


@dataclass
class DatasetIndex:
    clips: list[ClipEntry] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "clips": [asdict(c) for c in self.clips],
                "failed": self.failed}


def read_index(path: Path) -> DatasetIndex:
    """A ``dataset.json``; a clear error for anything else."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SelvaError(f"Dataset index {path} does not exist (prepare_dataset.py writes dataset.json "
                         f"into the dataset folder).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SelvaError(f"{path} is not a dataset index: it is not readable JSON ({e}).") from e
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("clips"), list):
        raise SelvaError(f"{path} is not a dataset index (expected the dataset.json written by "
                         f"prepare_dataset.py, with format '{INDEX_FORMAT}').")
    try:
        clips = [ClipEntry(**c) for c in data["clips"]]
    except TypeError as e:
        raise SelvaError(f"{path}: a clip entry is malformed ({e}).") from e
    return DatasetIndex(clips, list(data.get("failed", [])))


def read_prompt_csv(path: Path) -> dict[str, str]:
    """Video file name (or stem) -> prompt from a CSV with a file/video and a prompt/label column."""
    with open(path, newline="", encoding="utf-8") as f:
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

    with av.open(str(path)) as c:
        if not c.streams.video:
            raise SelvaError(f"{path} has no video stream.")
        s = c.streams.video[0]
        if s.duration is not None and s.time_base is not None:
            return float(s.duration * s.time_base)
        if c.duration is not None:
            return c.duration / 1_000_000
    raise SelvaError(f"Cannot tell how long {path} is.")


def clip_spans(duration: float, clip_seconds: float) -> list[tuple[float, float]]:
    """(start, length) of each clip: full clips, plus a tail of at least MIN_TAIL_SECONDS."""
    if clip_seconds <= 0:
        raise SelvaError(f"clip_seconds must be positive, got {clip_seconds}.")
    full = int(math.floor(duration / clip_seconds + 1e-9))
    spans = [(i * clip_seconds, clip_seconds) for i in range(full)]
    tail = duration - full * clip_seconds
    if tail >= MIN_TAIL_SECONDS or not spans:
        spans.append((full * clip_seconds, tail))
    return spans


def _prompt_for(video: Path, opts: PrepareOptions, table: dict[str, str]) -> str:
    if video.stem in table:
        return table[video.stem]
    caption = video.with_suffix(".txt")
    if opts.captions and caption.is_file() and caption.read_text(encoding="utf-8").strip():
        return caption.read_text(encoding="utf-8").strip()
    if opts.prompt:
        return opts.prompt
    raise SelvaError(f"No prompt for {video.name}: give --prompt, a CSV row, or a {video.stem}.txt caption "
                     f"with --captions.")


def _clean_audio(video: Path) -> Optional[Path]:
    for ext in AUDIO_EXTENSIONS:
        p = video.with_suffix(ext)
        if p.is_file():
            return p
    return None


def _save_frames(folder: Path, frames_thwc_u8: torch.Tensor) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames_thwc_u8):
        Image.fromarray(frame.numpy()).save(folder / f"{i:05d}.jpg", quality=92)


def prepare_dataset(pipe, opts: PrepareOptions, hooks: Optional[Hooks] = None) -> DatasetIndex:
    """Make (or continue) the dataset; returns the index as written."""
    from ..encoding import PreparedInput
    from .. import video as video_ops

    hooks = or_default(hooks)
    videos_dir, out = Path(opts.videos_dir).expanduser(), Path(opts.out_dir).expanduser()
    if not videos_dir.is_dir():
        raise SelvaError(f"The videos folder {videos_dir} does not exist.")
    videos = sorted(p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not videos:
        raise SelvaError(f"No videos in {videos_dir} (looked for {', '.join(VIDEO_EXTENSIONS)}).")
    table = read_prompt_csv(opts.csv_path) if opts.csv_path else {}
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX_NAME
    index = read_index(index_path) if index_path.is_file() else DatasetIndex()
    done = {c.id for c in index.clips if (out / c.features).is_file() and (out / c.audio).is_file()}
    index.clips = [c for c in index.clips if c.id in done]
    index.failed = []
    for n, video in enumerate(videos, 1):
        try:
            prompt = _prompt_for(video, opts, table)
            spans = clip_spans(video_duration(video), opts.clip_seconds)
            ids = [f"{video.stem}_{i:03d}" for i in range(len(spans))]
            if all(i in done for i in ids):
                hooks.step("videos", n, len(videos))
                continue
            audio_src = _clean_audio(video) or video
            wave, rate = read_audio(audio_src)
            for clip_id, (start, length) in zip(ids, spans):
                if clip_id in done:
                    continue
                frames = video_ops.decode_video(video, duration=length, start=start)
                feats = pipe.encode(PreparedInput(frames), prompt, hooks)
                feats.save(out / f"{clip_id}.npz")
                a, b = int(round(start * rate)), int(round((start + length) * rate))
                write_wav(out / f"{clip_id}.wav", wave[:, a:b], rate)
                frames_dir = None
                if opts.keep_frames:
                    frames_dir = f"frames/{clip_id}"
                    _save_frames(out / frames_dir, feats.sync_frames_u8)
                index.clips.append(ClipEntry(clip_id, str(video), f"{clip_id}.wav", f"{clip_id}.npz",
                                             frames_dir, prompt, float(feats.duration), float(start)))
                done.add(clip_id)
        except Interrupted:
            write_json(index_path, index.to_json())
            raise
        except Exception as e:  # one bad video never ends the run
            log.warning("Skipping %s: %s", video.name, e)
            index.failed.append({"video": str(video), "error": str(e)})
        write_json(index_path, index.to_json())
        hooks.step("videos", n, len(videos))
    write_json(index_path, index.to_json())
    log.info("Dataset %s: %d clips, %d video(s) failed", out, len(index.clips), len(index.failed))
    return index


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--videos", type=Path, required=True, help="folder of videos")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write (or continue)")
    src = p.add_argument_group("prompts (first found: CSV row, caption, --prompt)")
    src.add_argument("--prompt", default="", help="one prompt for every video")
    src.add_argument("--csv", type=Path, default=None, help="CSV with file,prompt columns")
    src.add_argument("--captions", action="store_true", help="use a same-name .txt beside each video")
    p.add_argument("--clip-seconds", "--clip_seconds", dest="clip_seconds", type=float, default=8.0,
                   help="cut long videos into clips this long (default: 8, what the models saw)")
    p.add_argument("--keep-frames", "--keep_frames", dest="keep_frames", action="store_true",
                   help="also keep each clip's 25 fps frames as JPEG (frames/<id>/)")


def run_from_args(args: argparse.Namespace, load_options) -> int:
    from ..pipeline import SelvaPipeline

    opts = PrepareOptions(videos_dir=args.videos, out_dir=args.out, prompt=args.prompt,
                          csv_path=args.csv, captions=args.captions, clip_seconds=args.clip_seconds,
                          keep_frames=args.keep_frames)
    pipe = SelvaPipeline.load(load_options(args))
    index = prepare_dataset(pipe, opts)
    print(opts.out_dir / INDEX_NAME)
    return 0 if index.clips else 1
