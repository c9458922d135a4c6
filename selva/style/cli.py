"""Command line of the style tools: ``python -m selva train-ti ...`` (textual inversion).

``training/train_ti.py ...`` is the same command. Ctrl-C stops after the current step and saves a
checkpoint; ``--resume latest`` continues it.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub, add_model_args, load_options) -> dict:
    """Add the style sub-commands to ``python -m selva``; returns {name: handler}."""
    from ..train.options import add_cli_options
    from .textual_inversion import TiTrainOptions

    p = sub.add_parser("train-ti", help="train textual-inversion tokens on a dataset folder")
    p.add_argument("--data_dir", "--data-dir", dest="data_dir", type=Path, required=True,
                   help="dataset folder: clip.npz + clip.wav pairs (as for LoRA training)")
    p.add_argument("--output_dir", "--output-dir", dest="output_dir", type=Path, required=True,
                   help="runs go to <output_dir>/textual_inversion_NNN")
    add_cli_options(p, TiTrainOptions)
    p.add_argument("--resume", default="", help="'latest', a checkpoint or a run folder")
    p.add_argument("--cache_dir", type=Path, default=None, help="VAE posterior cache (default: in data_dir)")
    add_model_args(p)
    return {"train-ti": lambda a: cmd_train_ti(a, load_options)}


def cmd_train_ti(args: argparse.Namespace, load_options) -> int:
    from ..hooks import Hooks
    from ..pipeline import SelvaPipeline
    from ..train.cli import ctrl_c_requests_stop
    from ..train.options import from_namespace
    from .textual_inversion import TiTrainOptions, train_textual_inversion

    options = from_namespace(TiTrainOptions, args)
    options.validate()
    pipe = SelvaPipeline.load(load_options(args))
    with ctrl_c_requests_stop() as stop:
        hooks = Hooks(progress=_log_progress, interrupted=lambda: bool(stop))
        run = train_textual_inversion(pipe, args.data_dir, args.output_dir, options,
                                      resume=args.resume or None, hooks=hooks, cache_dir=args.cache_dir)
    log.info("Done: %d steps, final loss %.4f", run.result.steps_done, run.result.final_loss or float("nan"))
    print(run.embedding.path)
    return 0


def _log_progress(stage: str, done: int, total: int) -> None:
    if stage == "training" and (done == 1 or done % 50 == 0 or done == total):
        log.info("step %d/%d", done, total)
