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
    from ..train.options import add_cli_options
    from .tuner import VocoderTuningConfig

    p = argparse.ArgumentParser(
        prog="train_vocoder.py",
        description="Fine-tune SelVA's BigVGAN vocoder on a folder of audio (same as the SelVA "
                    "BigVGAN Trainer node). Each run writes a new <output>/bigvgan_NNN folder.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    add_model_args(p)
    g = p.add_argument_group("tuning")
    g.add_argument("--data-dir", type=Path, required=True, help="folder of audio files (searched recursively)")
    g.add_argument("--output", type=Path, required=True, help="folder for the run folders")
    add_cli_options(g, VocoderTuningConfig)
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
    from ..train.options import from_namespace
    from .tuner import VocoderTuningConfig, tune_vocoder

    args = build_parser().parse_args(argv)
    restore_logging = setup_logging(args.verbose)
    try:
        cfg = from_namespace(VocoderTuningConfig, args, data_dir=args.data_dir, output_path=args.output,
                             discriminator_path=args.discriminator, resume=args.resume).validate()
        hooks = Hooks(progress=LogProgress())
        pipe = SelvaPipeline.load(load_options(args), hooks=hooks)
        path, result = tune_vocoder(pipe, cfg, hooks, on_step=_log_step)
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
