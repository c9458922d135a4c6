"""Command line of the style tools: ``python -m selva train-ti ...`` (textual inversion).

``training/train_ti.py ...`` is the same command. Ctrl-C stops after the current step and saves a
checkpoint; ``--resume latest`` continues it.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_train_ti_args(p: argparse.ArgumentParser) -> None:
    from .textual_inversion import PATHS, TiTrainOptions

    d = TiTrainOptions()
    p.add_argument("--data_dir", "--data-dir", dest="data_dir", type=Path, required=True,
                   help="dataset folder: clip.npz + clip.wav pairs (as for LoRA training)")
    p.add_argument("--output_dir", "--output-dir", dest="output_dir", type=Path, required=True,
                   help="runs go to <output_dir>/textual_inversion_NNN")
    p.add_argument("--n_tokens", type=int, default=d.n_tokens, help=f"learned tokens (default {d.n_tokens})")
    p.add_argument("--init_text", default=d.init_text, help="words the tokens start from (default: first prompt)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--save_every", type=int, default=d.save_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--path", choices=PATHS, default=d.path,
                   help="clip: tokens in the generator's CLIP text sequence; clip_t5: also in the T5 "
                        "sequence that conditions the sync features (default clip)")
    p.add_argument("--backbone_cache_mb", type=int, default=d.backbone_cache_mb,
                   help=f"clip_t5: host memory for the clips' video-encoder tokens, recomputed when "
                        f"they do not fit (default {d.backbone_cache_mb})")
    p.add_argument("--no_eval_samples", action="store_true", help="skip the eval samples at each save")
    p.add_argument("--resume", default="", help="'latest', a checkpoint or a run folder")
    p.add_argument("--cache_dir", type=Path, default=None, help="VAE posterior cache (default: in data_dir)")


def cmd_train_ti(args: argparse.Namespace, load_options) -> int:
    from ..hooks import Hooks
    from ..pipeline import SelvaPipeline
    from ..train.cli import ctrl_c_requests_stop
    from .textual_inversion import TiTrainOptions, train_textual_inversion

    options = TiTrainOptions(n_tokens=args.n_tokens, init_text=args.init_text, steps=args.steps, lr=args.lr,
                             batch_size=args.batch_size, save_every=args.save_every, seed=args.seed,
                             path=args.path, eval_samples=not args.no_eval_samples,
                             backbone_cache_mb=args.backbone_cache_mb)
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


def register(sub, add_model_args, load_options) -> dict:
    """Add the style sub-commands to ``python -m selva``; returns {name: handler}."""
    ti = sub.add_parser("train-ti", help="train textual-inversion tokens on a dataset folder")
    add_train_ti_args(ti)
    add_model_args(ti)
    return {"train-ti": lambda a: cmd_train_ti(a, load_options)}
