"""Command lines of the training suite: ``train-lora``, ``prepare-dataset`` and ``skip``.

``python -m selva train-lora ...`` and ``training/train_lora.py ...`` are the same command;
``torchrun --nproc_per_node N training/train_lora.py ...`` trains data-parallel.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Iterator

from .options import add_cli_options, from_namespace, option_flags

log = logging.getLogger(__name__)


def add_train_lora_args(p: argparse.ArgumentParser) -> None:
    from .lora_trainer import LoraTrainOptions

    g = p.add_argument_group("data")
    g.add_argument(*option_flags("data_dir"), dest="data_dir", type=Path, required=True,
                   help="dataset folder: features .npz + same-name audio per clip")
    g.add_argument(*option_flags("output_dir"), dest="output_dir", type=Path, default=Path("output/selva_lora"),
                   help="runs go to <output_dir>/lora_NNN (default: output/selva_lora)")
    g.add_argument(*option_flags("eval_features"), dest="eval_features", type=Path, default=None,
                   help="features .npz the eval samples are made from (default: the first clip)")
    g.add_argument(*option_flags("cache_dir"), dest="cache_dir", type=Path, default=None,
                   help="where encoded audio is cached (default: <data_dir>/.selva_cache/latents)")
    t = p.add_argument_group("training")
    add_cli_options(t, LoraTrainOptions)
    t.add_argument("--resume", default="", help="a checkpoints/step_NNNNNN.pt file, a run folder, or 'latest'")


@contextlib.contextmanager
def ctrl_c_requests_stop() -> Iterator[list]:
    """The first Ctrl-C asks the loop to stop after the current step (it then saves a
    checkpoint); a second one aborts at once."""
    flag: list = []
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag.append(True)
        log.warning("Stopping after this step and saving a checkpoint (Ctrl-C again to abort).")

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _show_step(bar, info) -> None:
    """The step, loss, lr and steps/s on a tqdm bar."""
    bar.n = info.step
    bar.set_postfix(loss=f"{info.loss:.4f}", lr=f"{info.lr:.2e}", it_s=f"{info.steps_per_s:.2f}", refresh=False)
    bar.refresh()


def cmd_train_lora(args: argparse.Namespace, load_options) -> int:
    from ..features import Features
    from ..hooks import Hooks
    from ..pipeline import SelvaPipeline
    from .. import distributed
    from .dataset import load_dataset
    from .lora_trainer import LoraTrainOptions, train_lora

    options = from_namespace(LoraTrainOptions, args)
    options.validate()
    ctx = distributed.from_environment()
    try:
        load = load_options(args)
        load.device = distributed.device_for(ctx, load.device)
        pipe = SelvaPipeline.load(load)
        eval_features = Features.load(args.eval_features) if args.eval_features else None
        # Rank 0 encodes (and caches) the dataset first; the others then read the cache.
        dataset = None
        if ctx.is_main:
            dataset = load_dataset(pipe, args.data_dir, cache_dir=args.cache_dir)
        ctx.barrier()
        if dataset is None:
            dataset = load_dataset(pipe, args.data_dir, cache_dir=args.cache_dir)
        bar = None  # a tqdm bar on rank 0's terminal, else log lines
        if ctx.is_main and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=options.steps, desc="training", unit="step", dynamic_ncols=True)
        with ctrl_c_requests_stop() as stop:
            hooks = Hooks(interrupted=lambda: bool(stop))
            try:
                run = train_lora(pipe, args.data_dir, args.output_dir, options, resume=args.resume or None,
                                 eval_features=eval_features, dataset=dataset, hooks=hooks, ctx=ctx,
                                 on_step=_log_step if bar is None else lambda info: _show_step(bar, info))
            finally:
                if bar is not None:
                    bar.close()
        if ctx.is_main:
            log.info("Done: %d steps, final loss %.4f; adapter %s", run.result.steps_done,
                     run.result.final_loss or float("nan"), run.result.exported)
            print(run.result.exported)
    finally:
        distributed.shutdown()
    return 0


def _log_step(info) -> None:
    if info.step == 1 or info.step % 50 == 0 or info.step == info.steps:
        log.info("step %d/%d  loss %.4f  lr %.2e  %.2f steps/s", info.step, info.steps, info.loss,
                 info.lr, info.steps_per_s)


def cmd_skip(args: argparse.Namespace) -> int:
    from .sweep import request_skip

    flag = request_skip(args.sweep_dir)
    print(flag)
    return 0


def register(sub, add_model_args, load_options) -> dict:
    """Add the training sub-commands to ``python -m selva``; returns {name: handler}."""
    from ..datasets.cli import add_prepare_arguments, run_prepare

    tl = sub.add_parser("train-lora", help="train a LoRA on a dataset folder")
    add_train_lora_args(tl)
    add_model_args(tl)
    pd = sub.add_parser("prepare-dataset", help="make a training dataset from a folder of videos")
    add_prepare_arguments(pd)
    add_model_args(pd)
    sk = sub.add_parser("skip", help="end the running experiment of a sweep (the sweep goes on)")
    sk.add_argument("sweep_dir", type=Path, help="the sweep's folder (holds experiment_summary.json)")
    return {"train-lora": lambda a: cmd_train_lora(a, load_options),
            "prepare-dataset": lambda a: run_prepare(a, load_options),
            "skip": cmd_skip}
