"""Run rows through one loaded pipeline: skip what exists, keep going past failures, report.

Per row: decode and resize the video (a background thread does this for the next row while the
current one is generated), encode, sample, decode, normalise, write ``<name>.<format>`` (and
``<name>.mp4`` with ``mux``) atomically. A row whose outputs all exist is skipped unless
``overwrite``; a failed row leaves no output, so the next run tries it again.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from ..audio import DEFAULT_TARGET_LUFS, loudness_normalize
from ..errors import SelvaError
from ..features import FeatureCache, cache_max_bytes
from ..hooks import Hooks, Interrupted
from ..long_video import DEFAULT_OVERLAP_SECONDS, DEFAULT_WINDOW_SECONDS, WindowOptions
from .grouped import generate_group, group_key
from .results import RowResult, write_results
from .rows import Row

# The single-clip path's writers (selva/media.py after the media split; one import line here).
from ..media import mux_video, write_audio

log = logging.getLogger(__name__)

AUDIO_FORMATS = ("flac", "wav", "m4a", "mp3", "opus")

# results.jsonl is rewritten at most this often while rows finish (and always at the end): a
# library of thousands of rows must not rewrite a growing file after every row.
RESULTS_WRITE_INTERVAL = 5.0

# (result, rows finished so far, rows in this run, a preview frame (H, W, 3) uint8 or None)
RowCallback = Callable[[RowResult, int, int, Optional[torch.Tensor]], None]


@dataclass
class BatchOptions:
    """Settings shared by every row (per-row values live in :class:`~selva.batch.rows.Row`)."""

    out_dir: Path = field(metadata={"help": "folder for <name>.<format>, <name>.mp4 and results.jsonl"})
    format: str = field(default="flac", metadata={"help": "audio format: " + ", ".join(AUDIO_FORMATS)})
    steps: int = field(default=25, metadata={"help": "Euler steps"})
    cfg_strength: float = field(default=4.5, metadata={"help": "classifier-free guidance strength"})
    normalize: bool = field(default=True, metadata={"help": "loudness-normalise to target_lufs"})
    target_lufs: float = field(default=DEFAULT_TARGET_LUFS, metadata={"help": "loudness target"})
    window_seconds: float = field(default=DEFAULT_WINDOW_SECONDS, metadata={"help": "window length for longer clips"})
    overlap_seconds: float = field(default=DEFAULT_OVERLAP_SECONDS, metadata={"help": "overlap of neighbouring windows"})
    mux: bool = field(default=False, metadata={"help": "also write <name>.mp4 with the new audio"})
    overwrite: bool = field(default=False, metadata={"help": "redo rows whose outputs exist"})
    batch_rows: int = field(default=1, metadata={"help": "rows of one length sampled together"})
    cache_dir: Optional[Path] = field(default=None, metadata={"help": "feature cache folder"})
    cache_max_gb: Optional[float] = field(default=None, metadata={"help": "feature cache cap"})

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.format = self.format.lower().lstrip(".")
        if self.format not in AUDIO_FORMATS:
            raise SelvaError(f"Unknown audio format {self.format!r}; choose one of {', '.join(AUDIO_FORMATS)}.")
        if self.batch_rows < 1:
            raise SelvaError(f"batch_rows must be at least 1, got {self.batch_rows}.")
        if self.steps < 1:
            raise SelvaError(f"steps must be at least 1, got {self.steps}.")

    @property
    def windows(self) -> WindowOptions:
        return WindowOptions(self.window_seconds, self.overlap_seconds)


def outputs_for(row: Row, options: BatchOptions) -> list[Path]:
    outs = [options.out_dir / f"{row.name}.{options.format}"]
    if options.mux:
        outs.append(options.out_dir / f"{row.name}.mp4")
    return outs


def check_outputs(rows: Sequence[Row], options: BatchOptions) -> None:
    """Fail before any work when an output would replace one of the batch's videos."""
    inputs = {r.video.resolve(): r for r in rows}
    for row in rows:
        for out in outputs_for(row, options):
            clash = inputs.get(out.resolve())
            if clash is not None:
                raise SelvaError(f"The output {out} of {row.source} would replace the input video of "
                                 f"{clash.source}; choose another output folder.")


@dataclass
class _Encoded:
    row: Row
    features: Any
    seconds: float  # decoding and encoding it took
    preview: Optional[torch.Tensor] = None  # a frame of the clip (H, W, 3) uint8


def _error_text(e: BaseException) -> str:
    return str(e) if isinstance(e, SelvaError) else f"{type(e).__name__}: {e}"


class BatchRun:
    """One pass over ``rows`` with a loaded pipeline (see :func:`run_batch`)."""

    def __init__(self, pipe: Any, rows: Sequence[Row], options: BatchOptions, hooks: Optional[Hooks],
                 on_row: Optional[RowCallback], write_file: bool) -> None:
        self.pipe, self.rows, self.options = pipe, list(rows), options
        # Only the cancel check goes down to the pipeline: per-stage progress of every row would
        # drown the row-level report.
        self.hooks = Hooks(interrupted=hooks.interrupted if hooks is not None else None)
        self.on_row, self.write_file = on_row, write_file
        self.results: dict[int, RowResult] = {}
        self.total = len(self.rows)
        self.cache = (FeatureCache(options.cache_dir, cache_max_bytes(options.cache_max_gb))
                      if options.cache_dir else None)
        self._groups: dict[tuple, list[_Encoded]] = {}
        self._written = float("-inf")  # time.monotonic() of the last results.jsonl write

    # ------------------------------------------------------------------------------ reporting
    def _record(self, row: Row, status: str, *, error: Optional[str] = None, seconds: float = 0.0,
                outputs: Sequence[Path] = (), preview: Optional[torch.Tensor] = None) -> None:
        result = RowResult(index=row.index, name=row.name, video=str(row.video), prompt=row.prompt,
                           seed=row.seed, status=status, error=error, seconds=round(seconds, 3),
                           outputs=[str(p) for p in outputs])
        self.results[row.index] = result
        if status == "failed":
            log.warning("%s (%s) failed: %s", row.name, row.source, error)
        if self.write_file and time.monotonic() - self._written >= RESULTS_WRITE_INTERVAL:
            write_results(self.options.out_dir, self.results.values())
            self._written = time.monotonic()
        if self.on_row is not None:
            self.on_row(result, len(self.results), self.total, preview)

    # ---------------------------------------------------------------------------------- steps
    def _prepare(self, row: Row) -> tuple[Any, float]:
        t0 = time.monotonic()
        prepared = self.pipe.prepare(row.video, duration=row.duration or None, start=row.start,
                                     hooks=self.hooks)
        return prepared, time.monotonic() - t0

    def _finish(self, item: _Encoded, wave: torch.Tensor, sampling_seconds: float) -> None:
        """Normalise and write one row's audio (and muxed video)."""
        t0 = time.monotonic()
        row, opts, rate = item.row, self.options, self.pipe.sample_rate
        if opts.normalize:
            wave = loudness_normalize(wave, rate, opts.target_lufs)
        outs = outputs_for(row, opts)
        write_audio(outs[0], wave[0], rate)
        if opts.mux:
            mux_video(row.video, wave[0], rate, outs[1], duration=item.features.duration,
                      start=item.features.start)
        seconds = item.seconds + sampling_seconds + time.monotonic() - t0
        self._record(row, "done", seconds=seconds, outputs=outs, preview=item.preview)

    def _generate_one(self, item: _Encoded) -> None:
        o, t0 = self.options, time.monotonic()
        wave = self.pipe.generate(item.features, negative_prompt=item.row.negative_prompt, steps=o.steps,
                                  cfg_strength=o.cfg_strength, seed=item.row.seed, hooks=self.hooks,
                                  windows=o.windows)
        self._finish(item, wave, time.monotonic() - t0)

    def _flush(self, key: tuple) -> None:
        items = self._groups.pop(key)
        if len(items) == 1:
            return self._guarded(items[0], self._generate_one)
        o = self.options
        t0 = time.monotonic()
        try:
            waves = generate_group(self.pipe, [i.features for i in items],
                                   [i.row.negative_prompt for i in items], [i.row.seed for i in items],
                                   steps=o.steps, cfg_strength=o.cfg_strength, windows=o.windows,
                                   hooks=self.hooks)
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - one clip's trouble must not sink the others
            log.warning("Sampling %d rows together failed (%s); trying them one by one.", len(items),
                        _error_text(e))
            for item in items:
                self._guarded(item, self._generate_one)
            return
        # the pass's time is shared out: each row cost a share of it
        share = (time.monotonic() - t0) / len(items)
        for item, wave in zip(items, waves):
            self._guarded(item, lambda it, w=wave: self._finish(it, w, share))

    def _guarded(self, item: _Encoded, work: Callable[[_Encoded], None]) -> None:
        try:
            work(item)
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - recorded; the batch goes on
            self._record(item.row, "failed", error=_error_text(e), seconds=item.seconds)

    # ------------------------------------------------------------------------------------ run
    def run(self) -> list[RowResult]:
        opts = self.options
        check_outputs(self.rows, opts)
        opts.out_dir.mkdir(parents=True, exist_ok=True)
        todo = []
        for row in self.rows:
            outs = outputs_for(row, opts)
            if not opts.overwrite and all(p.is_file() for p in outs):
                self._record(row, "skipped", outputs=outs)
            else:
                todo.append(row)
        if todo:
            log.info("%d rows to generate, %d skipped (their outputs exist)", len(todo), len(self.rows) - len(todo))
        try:
            self._run(todo)
        finally:
            if self.write_file and self.results:
                write_results(opts.out_dir, self.results.values())
        return [self.results[i] for i in sorted(self.results)]

    def _run(self, todo: list[Row]) -> None:
        # One reader thread: the next video is decoded while the current one is generated.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="selva-batch-reader") as reader:
            pending: deque[tuple[Row, Future]] = deque()
            queue = iter(todo)

            def submit_next() -> None:
                row = next(queue, None)
                if row is not None:
                    pending.append((row, reader.submit(self._prepare, row)))

            submit_next()
            try:
                while pending:
                    self.hooks.check()
                    row, future = pending.popleft()
                    submit_next()
                    self._one(row, future)
                for key in list(self._groups):
                    self._flush(key)
            finally:
                for _, future in pending:
                    future.cancel()

    def _one(self, row: Row, future: Future) -> None:
        t0 = time.monotonic()
        prepare_seconds = 0.0
        try:
            prepared, prepare_seconds = future.result()
            t0 = time.monotonic()
            features = self.pipe.encode(prepared, row.prompt, self.hooks, self.cache)
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - recorded; the batch goes on
            self._record(row, "failed", error=_error_text(e), seconds=prepare_seconds + time.monotonic() - t0)
            return
        clip = prepared.frames.clip_u8
        # the reader's time counts for the row even though it overlapped the previous one
        item = _Encoded(row, features, prepare_seconds + time.monotonic() - t0,
                        clip[len(clip) // 2].permute(1, 2, 0) if len(clip) else None)
        key = group_key(self.pipe, features, self.options.windows) if self.options.batch_rows > 1 else None
        if key is None:
            self._guarded(item, self._generate_one)
            return
        group = self._groups.setdefault(key, [])
        group.append(item)
        if len(group) >= self.options.batch_rows:
            self._flush(key)


def run_batch(pipe: Any, rows: Sequence[Row], options: BatchOptions, *, hooks: Optional[Hooks] = None,
              on_row: Optional[RowCallback] = None, write_file: bool = True) -> list[RowResult]:
    """Make audio for every row with ``pipe``; returns one result per row, in row order.

    ``hooks.interrupted`` cancels (``Interrupted`` is raised after ``results.jsonl`` was
    written for the rows finished so far). ``write_file`` False leaves ``results.jsonl`` to the
    caller (torchrun: rank 0 merges every rank's results).
    """
    return BatchRun(pipe, rows, options, hooks, on_row, write_file).run()
