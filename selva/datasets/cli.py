"""``python -m selva prepare-dataset`` and ``python -m selva dataset-report DIR``."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .folder import INDEX_NAME, PrepareOptions
from .report import ReportOptions

log = logging.getLogger(__name__)


def _help(cls, name: str) -> str:
    return cls.__dataclass_fields__[name].metadata["help"]


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    h = lambda name: _help(PrepareOptions, name)  # noqa: E731
    p.add_argument("--videos", type=Path, required=True, help=h("videos_dir"))
    p.add_argument("--out", type=Path, required=True, help=h("out_dir"))
    src = p.add_argument_group("prompts (first found: CSV row, caption, --prompt)")
    src.add_argument("--prompt", default="", help=h("prompt"))
    src.add_argument("--csv", type=Path, default=None, help=h("csv_path"))
    src.add_argument("--captions", dest="captions", action="store_true", default=True,
                     help=h("captions") + " (the default)")
    src.add_argument("--no-captions", dest="captions", action="store_false", help="ignore .txt captions")
    p.add_argument("--clip-seconds", "--clip_seconds", dest="clip_seconds", type=float, default=8.0,
                   help=h("clip_seconds"))
    p.add_argument("--hop-seconds", "--hop_seconds", dest="hop_seconds", type=float, default=0.0,
                   help=h("hop_seconds"))
    p.add_argument("--min-loudness-lufs", "--min_loudness_lufs", dest="min_loudness_lufs", type=float,
                   default=-50.0, help=h("min_loudness_lufs"))
    p.add_argument("--target-lufs", "--target_lufs", dest="target_lufs", type=float, default=None,
                   help=h("target_lufs"))
    p.add_argument("--keep-frames", "--keep_frames", dest="keep_frames", action="store_true",
                   help=h("keep_frames"))


def prepare_options(args: argparse.Namespace) -> PrepareOptions:
    return PrepareOptions(videos_dir=args.videos, out_dir=args.out, prompt=args.prompt, csv_path=args.csv,
                          captions=args.captions, clip_seconds=args.clip_seconds,
                          hop_seconds=args.hop_seconds, min_loudness_lufs=args.min_loudness_lufs,
                          target_lufs=args.target_lufs, keep_frames=args.keep_frames)


def run_prepare(args: argparse.Namespace, load_options) -> int:
    from ..hooks import Hooks
    from ..pipeline import SelvaPipeline
    from .folder import prepare_dataset

    opts = prepare_options(args)
    opts.validate()
    pipe = SelvaPipeline.load(load_options(args))
    hooks = Hooks(progress=lambda stage, done, total: log.info("%s %d/%d", stage, done, total))
    index = prepare_dataset(pipe, opts, hooks)
    print(opts.out_dir / INDEX_NAME)
    return 0 if index.clips else 1


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    h = lambda name: _help(ReportOptions, name)  # noqa: E731
    p.add_argument("data_dir", type=Path, help="the dataset folder")
    p.add_argument("--min-seconds", dest="min_seconds", type=float, default=1.0, help=h("min_seconds"))
    p.add_argument("--silent-lufs", dest="silent_lufs", type=float, default=-50.0, help=h("silent_lufs"))
    p.add_argument("--out", type=Path, default=None,
                   help="where to write dataset_report.{json,md,png} (default: the dataset folder)")


def run_report(args: argparse.Namespace) -> int:
    from .report import build_report, table_text, write_report

    report = build_report(args.data_dir, ReportOptions(min_seconds=args.min_seconds,
                                                       silent_lufs=args.silent_lufs))
    write_report(report, args.out)
    print(table_text(report), end="")
    return 0


def register(sub) -> dict:
    """Add ``dataset-report`` to ``python -m selva`` (``prepare-dataset`` is registered with the
    training commands); returns {name: handler}."""
    rp = sub.add_parser("dataset-report", help="measure and flag every clip of a dataset folder")
    add_report_arguments(rp)
    return {"dataset-report": run_report}
