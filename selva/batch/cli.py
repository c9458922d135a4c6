"""``python -m selva batch``: a folder of videos or a manifest, networks loaded once.

Under ``torchrun --nproc_per_node N -m selva batch ...`` the rows are split over the processes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from .. import distributed
from ..errors import SelvaError
from ..options import add_sampling_arguments
from .results import RowResult, summary_line, write_results
from .rows import RowDefaults, rows_from_folder, rows_from_manifest
from .runner import AUDIO_FORMATS, BatchOptions, run_batch


def add_batch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", type=Path, help="folder: every video file in it (recursively), "
                                                 "in sorted order; other files are ignored")
    src.add_argument("--manifest", type=Path,
                     help=".csv (with a header) or .jsonl; columns video (relative to the "
                          "manifest's folder), prompt, negative_prompt, seed, start, duration, name")
    g.add_argument("--prompt", default=None, help="the sound to generate (required with --videos; "
                                                  "the default for manifest rows without one)")
    g.add_argument("--negative-prompt", default="", help="sounds to steer away from")
    g.add_argument("--seed", type=int, default=42, help="noise seed of rows without one (default: 42)")
    g.add_argument("--start", type=float, default=0.0, help="seconds into each video (default: 0)")
    g.add_argument("--duration", type=float, default=8.0,
                   help="seconds from --start (0 = to the end of each video; default: 8)")
    g.add_argument("--cache-dir", type=Path, default=None, help="cache extracted features here (.npz)")
    g.add_argument("--cache-max-gb", type=float, default=None, help="size cap of the feature cache")
    s = p.add_argument_group("sampling")
    add_sampling_arguments(s)
    s.add_argument("--batch-rows", type=int, default=1,
                   help="sample up to N rows of the same length together (same audio, better "
                        "throughput on a GPU; default: 1)")
    o = p.add_argument_group("output")
    o.add_argument("--out-dir", type=Path, required=True,
                   help="folder for <name>.<format>, <name>.mp4 (--mux) and results.jsonl")
    o.add_argument("--format", default="flac", choices=AUDIO_FORMATS, help="audio format (default: flac)")
    o.add_argument("--mux", action="store_true", help="also write <name>.mp4: the video with the new audio")
    o.add_argument("--overwrite", action="store_true",
                   help="redo rows whose outputs exist (default: skip them, so a re-run resumes)")


def register(sub: Any, add_model_args: Callable, load_options: Callable) -> dict:
    """Add ``batch`` to ``python -m selva``; returns {name: handler}."""
    p = sub.add_parser("batch", help="generate audio for a folder of videos or a manifest")
    add_batch_args(p)
    add_model_args(p)
    return {"batch": lambda a: cmd_batch(a, load_options)}


def read_rows(args: argparse.Namespace) -> list:
    defaults = RowDefaults(prompt=args.prompt or "", negative_prompt=args.negative_prompt, seed=args.seed,
                           start=args.start, duration=args.duration)
    if args.videos is not None:
        if not args.prompt:
            raise SelvaError("--videos needs --prompt (the sound to generate for every video).")
        return rows_from_folder(args.videos, defaults)
    return rows_from_manifest(args.manifest, defaults)


def batch_options(args: argparse.Namespace) -> BatchOptions:
    return BatchOptions(out_dir=args.out_dir, format=args.format, steps=args.steps, cfg_strength=args.cfg,
                        normalize=not args.no_normalize, target_lufs=args.target_lufs,
                        window_seconds=args.window_seconds, overlap_seconds=args.overlap_seconds,
                        mux=args.mux, overwrite=args.overwrite, batch_rows=args.batch_rows,
                        cache_dir=args.cache_dir, cache_max_gb=args.cache_max_gb)


def cmd_batch(args: argparse.Namespace, load_options: Callable) -> int:
    from tqdm import tqdm

    from ..pipeline import SelvaPipeline

    rows = read_rows(args)  # every rank reads all rows: names depend on the whole list
    options = batch_options(args)
    ranks = distributed.from_environment(objects_only=True)
    try:
        args.device = distributed.device_for(ranks, args.device)
        mine = ranks.shard(rows)
        pipe = SelvaPipeline.load(load_options(args))
        # rows done, rate and time left on stderr; silent on ranks other than 0
        bar = tqdm(total=len(mine), unit="row", file=sys.stderr, disable=not ranks.is_main, dynamic_ncols=True)

        def on_row(result: RowResult, done: int, total: int, preview: Any) -> None:
            bar.set_postfix_str(f"{result.name}: {result.status}", refresh=False)
            bar.update(1)

        try:
            results = run_batch(pipe, mine, options, on_row=on_row, write_file=not ranks.active)
        finally:
            bar.close()
        merged = ranks.all_gather_objects(results)
        if ranks.is_main:
            if ranks.active:
                write_results(options.out_dir, merged)
            print(summary_line(merged))
        return 1 if any(r.status == "failed" for r in merged) else 0
    finally:
        distributed.shutdown()
