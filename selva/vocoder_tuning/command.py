"""Command line of vocoder tuning (``python training/train_vocoder.py``): the Trainer node's inputs
as options, the same core and run folders."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from ..errors import SelvaError

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from ..cli import add_model_args
    from .params import TRAIN_MODES

    p = argparse.ArgumentParser(
        prog="train_vocoder.py",
        description="Fine-tune SelVA's BigVGAN vocoder on a folder of audio (same as the SelVA "
                    "BigVGAN Trainer node). Each run writes a new <output>/bigvgan_NNN folder.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    add_model_args(p)
    g = p.add_argument_group("tuning")
    g.add_argument("--data-dir", type=Path, required=True, help="folder of audio files (searched recursively)")
    g.add_argument("--output", type=Path, required=True, help="folder for the run folders")
    g.add_argument("--train-mode", default="snake_alpha_only", choices=list(TRAIN_MODES),
                   help="snake_alpha_only (default: only Snake alpha/beta) or all_params")
    g.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: 2000)")
    g.add_argument("--lr", type=float, default=1e-4, help="learning rate (default: 1e-4)")
    g.add_argument("--batch-size", type=int, default=4, help="segments per step (default: 4)")
    g.add_argument("--segment-seconds", type=float, default=1.0, help="segment length (default: 1.0)")
    g.add_argument("--lambda-l2sp", type=float, default=1e-3,
                   help="pull toward the pretrained weights (default: 1e-3)")
    g.add_argument("--save-every", type=int, default=500, help="steps between saves (default: 500; 0 = end)")
    g.add_argument("--seed", type=int, default=0, help="seed of the segment choice (default: 0)")
    g.add_argument("--discriminator", type=Path, default=None,
                   help="bigvgan_discriminator_optimizer.pt: adds feature matching with the frozen "
                        "pretrained discriminators (44.1 kHz release only)")
    g.add_argument("--resume", default=None,
                   help="'latest', a run folder, a checkpoints/step_NNNNNN.pt or a vocoder_step_*.safetensors")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import LogProgress, load_options, setup_logging
    from ..hooks import Hooks
    from ..pipeline import SelvaPipeline
    from .tuner import VocoderTuningConfig, tune_vocoder

    args = build_parser().parse_args(argv)
    restore_logging = setup_logging(args.verbose)
    try:
        cfg = VocoderTuningConfig(
            data_dir=args.data_dir, output_path=args.output, train_mode=args.train_mode, steps=args.steps,
            lr=args.lr, batch_size=args.batch_size, segment_seconds=args.segment_seconds,
            lambda_l2sp=args.lambda_l2sp, save_every=args.save_every, seed=args.seed,
            discriminator_path=args.discriminator, resume=args.resume).validate()
        hooks = Hooks(progress=LogProgress())
        pipe = SelvaPipeline.load(load_options(args), hooks=hooks)
        path, result = tune_vocoder(pipe, cfg, hooks, on_step=lambda info: _log_step(info))
        log.info("Tuned vocoder: %s (%d steps, final loss %.4f; run folder %s)", path, result.steps_done,
                 result.final_loss or float("nan"), result.run_dir)
        print(path)
        return 0
    except SelvaError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("Interrupted; the last checkpoint can be resumed with --resume latest.")
        return 130
    finally:
        restore_logging()


def _log_step(info) -> None:
    if info.step == 1 or info.step % 25 == 0 or info.step == info.steps:
        log.info("step %d/%d  loss %.4f  lr %.2e  %.2f steps/s", info.step, info.steps, info.loss, info.lr,
                 info.steps_per_s)
