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
from typing import Any, Iterator, Optional

from ..errors import SelvaError

log = logging.getLogger(__name__)


def _both(name: str) -> list[str]:
    """``--data_dir`` and ``--data-dir`` alike."""
    flags = [f"--{name}"]
    if "_" in name:
        flags.append(f"--{name.replace('_', '-')}")
    return flags


def add_train_lora_args(p: argparse.ArgumentParser) -> None:
    from .lora_trainer import LoraTrainOptions
    from .loss import TIMESTEP_SAMPLING

    d = LoraTrainOptions()
    g = p.add_argument_group("data")
    g.add_argument(*_both("data_dir"), dest="data_dir", type=Path, required=True,
                   help="dataset folder: features .npz + same-name audio per clip")
    g.add_argument(*_both("output_dir"), dest="output_dir", type=Path, default=Path("output/selva_lora"),
                   help="runs go to <output_dir>/lora_NNN (default: output/selva_lora)")
    g.add_argument(*_both("eval_features"), dest="eval_features", type=Path, default=None,
                   help="features .npz the eval samples are made from (default: the first clip)")
    g.add_argument(*_both("cache_dir"), dest="cache_dir", type=Path, default=None,
                   help="where encoded audio is cached (default: <data_dir>/.selva_cache/latents)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default: {d.steps})")
    t.add_argument("--rank", type=int, default=d.rank, help=f"LoRA rank (default: {d.rank})")
    t.add_argument("--alpha", type=float, default=d.alpha, help=f"LoRA alpha (default: {d.alpha})")
    t.add_argument("--target", default=d.target,
                   help=f"layer-name suffixes, space/comma separated (default: {d.target})")
    t.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default: {d.lr})")
    t.add_argument(*_both("warmup_steps"), dest="warmup_steps", type=int, default=d.warmup_steps,
                   help=f"linear warm-up steps (default: {d.warmup_steps})")
    t.add_argument(*_both("batch_size"), dest="batch_size", type=int, default=d.batch_size,
                   help=f"clips per micro-step and process (default: {d.batch_size})")
    t.add_argument(*_both("grad_accum"), dest="grad_accum", type=int, default=d.grad_accum,
                   help=f"micro-steps per optimizer step (default: {d.grad_accum})")
    t.add_argument(*_both("save_every"), dest="save_every", type=int, default=d.save_every,
                   help=f"checkpoint + adapter + eval sample every N steps (default: {d.save_every})")
    t.add_argument(*_both("timestep_sampling"), dest="timestep_sampling", default=d.timestep_sampling,
                   choices=list(TIMESTEP_SAMPLING), help="flow time distribution (default: logit_normal)")
    t.add_argument("--seed", type=int, default=d.seed, help=f"seed (default: {d.seed})")
    t.add_argument("--resume", default="", help="a checkpoints/step_NNNNNN.pt file, a run folder, or 'latest'")
    t.add_argument("--init", default=d.init, choices=["default", "pissa"], help="LoRA initialisation")
    t.add_argument("--rslora", action="store_true", help="scale by alpha / sqrt(rank)")
    t.add_argument(*_both("gradient_checkpointing"), dest="gradient_checkpointing", action="store_true",
                   help="recompute each transformer block in the backward pass (less VRAM)")
    t.add_argument(*_both("eval_steps"), dest="eval_steps", type=int, default=d.eval_steps,
                   help=f"sampling steps of the eval samples (default: {d.eval_steps})")
    t.add_argument(*_both("no_eval_samples"), dest="no_eval_samples", action="store_true",
                   help="skip the eval samples")


def lora_options_from_args(args: argparse.Namespace) -> Any:
    from .lora_trainer import LoraTrainOptions

    return LoraTrainOptions(steps=args.steps, rank=args.rank, alpha=args.alpha, target=args.target,
                            lr=args.lr, warmup_steps=args.warmup_steps, batch_size=args.batch_size,
                            grad_accum=args.grad_accum, save_every=args.save_every,
                            timestep_sampling=args.timestep_sampling, seed=args.seed, init=args.init,
                            rslora=args.rslora, gradient_checkpointing=args.gradient_checkpointing,
                            eval_steps=args.eval_steps, eval_samples=not args.no_eval_samples)


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


class StepBar:
    """A tqdm bar showing the loss and steps/s (rank 0 only)."""

    def __init__(self, total: int, enabled: bool = True):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="training", unit="step", dynamic_ncols=True)

    def __call__(self, info) -> None:
        if self.bar is not None:
            self.bar.n = info.step
            self.bar.set_postfix(loss=f"{info.loss:.4f}", lr=f"{info.lr:.2e}",
                                 it_s=f"{info.steps_per_s:.2f}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_train_lora(args: argparse.Namespace, load_options) -> int:
    from ..features import Features
    from ..hooks import Hooks
    from ..pipeline import SelvaPipeline
    from . import distributed
    from .dataset import load_dataset
    from .lora_trainer import train_lora

    options = lora_options_from_args(args)
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
        bar = StepBar(options.steps, enabled=ctx.is_main and sys.stderr.isatty())
        with ctrl_c_requests_stop() as stop:
            hooks = Hooks(interrupted=lambda: bool(stop))
            try:
                run = train_lora(pipe, args.data_dir, args.output_dir, options, resume=args.resume or None,
                                 eval_features=eval_features, dataset=dataset, hooks=hooks, ctx=ctx,
                                 on_step=bar if bar.bar is not None else _log_step)
            finally:
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


def add_skip_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_dir", type=Path, help="the sweep's folder (holds experiment_summary.json)")


def cmd_skip(args: argparse.Namespace) -> int:
    from .sweep import request_skip

    flag = request_skip(args.sweep_dir)
    print(flag)
    return 0


def add_prepare_args(p: argparse.ArgumentParser) -> None:
    from .prepare import add_arguments

    add_arguments(p)


def cmd_prepare_dataset(args: argparse.Namespace, load_options) -> int:
    from .prepare import run_from_args

    return run_from_args(args, load_options)


def register(sub, add_model_args, load_options) -> dict:
    """Add the training sub-commands to ``python -m selva``; returns {name: handler}."""
    tl = sub.add_parser("train-lora", help="train a LoRA on a dataset folder")
    add_train_lora_args(tl)
    add_model_args(tl)
    pd = sub.add_parser("prepare-dataset", help="make a training dataset from a folder of videos")
    add_prepare_args(pd)
    add_model_args(pd)
    sk = sub.add_parser("skip", help="end the running experiment of a sweep (the sweep goes on)")
    add_skip_args(sk)
    return {"train-lora": lambda a: cmd_train_lora(a, load_options),
            "prepare-dataset": lambda a: cmd_prepare_dataset(a, load_options),
            "skip": cmd_skip}
