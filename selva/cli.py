"""Command line: ``python -m selva generate | download | features | cache | train-lora | prepare-dataset | skip | train-ti``.

The options mirror the ComfyUI nodes; every piece of model work goes through
:mod:`selva.pipeline`; audio and muxed video are written by :mod:`selva.media`.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import SelvaError
from .media import audio_format, mux_video, read_mask, write_audio
from .options import add_sampling_arguments, windows_from_args

# Our package's logger ("selva" when run as ``python -m selva``); the root logger is left alone.
PACKAGE_LOGGER = __name__.rpartition(".")[0] or "selva"
log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ logging
def setup_logging(verbosity: int):
    """A stderr handler on our package logger only (never the root logger).

    Returns a function that undoes it, so calling :func:`main` in-process leaves no trace.
    """
    logger = logging.getLogger(PACKAGE_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    before = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
    logger.propagate = False

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]

    return restore


class LogProgress:
    """Hooks progress that logs each stage's start, end and roughly every 10 %."""

    def __init__(self) -> None:
        self._stage: Optional[str] = None
        self._last = -1
        self._t0 = time.monotonic()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self._stage, self._last, self._t0 = stage, -1, time.monotonic()
        tenth = int(10 * done / max(total, 1))
        if tenth != self._last or done == total:
            self._last = tenth
            log.info("%s: %d/%d (%.1f s)", stage, done, total, time.monotonic() - self._t0)


# ---------------------------------------------------------------------------------- outputs
def refuse_to_overwrite(paths: Sequence[Path], overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    """Fail before any work when an output would replace an input, another output of the run or
    (without --overwrite) a file."""
    read = {Path(i).resolve() for i in inputs}
    written: set[Path] = set()
    for path in paths:
        target = path.resolve()
        if target in read:
            raise SelvaError(f"{path} is an input of this run; choose another output path.")
        if target in written:
            raise SelvaError(f"{path} would be written twice by this run (--out and --mux); give each "
                             f"output its own path.")
        written.add(target)
        if path.exists() and not overwrite:
            raise SelvaError(f"{path} already exists; pass --overwrite to replace it.")


def numbered(path: Path, index: int, count: int) -> Path:
    """``out.wav`` for a single clip, ``out_0.wav``, ``out_1.wav``... for a batch."""
    path = Path(path)
    return path if count == 1 else path.with_name(f"{path.stem}_{index}{path.suffix}")


# ------------------------------------------------------------------------------- arguments
def add_model_args(p: argparse.ArgumentParser) -> None:
    from .offload import OFFLOAD_STRATEGIES, PRECISIONS
    from .variants import VARIANTS

    g = p.add_argument_group("model")
    g.add_argument("--variant", default="small_16k", choices=list(VARIANTS),
                   help="model size / sample rate (default: small_16k)")
    g.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help="compute precision (default: auto = bf16 where the device computes it "
                        "natively, fp16 on other GPUs and MPS, fp32 on other CPUs)")
    g.add_argument("--offload", default="auto", choices=list(OFFLOAD_STRATEGIES),
                   help="keep_in_vram, offload_to_cpu, or auto by free VRAM (default: auto); on a "
                        "CPU-only machine offload_to_cpu releases each network after use (least RAM)")
    g.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    g.add_argument("--models-dir", type=Path, default=None,
                   help="folder with the weights (default: $SELVA_MODELS_DIR or ./models/selva)")
    g.add_argument("--clip-frames", action="store_true",
                   help="feed CLIP image features of the video (the official demo does not)")
    g.add_argument("--offline", action="store_true", help="never download; fail if weights are missing")


def _add_feature_args(p: argparse.ArgumentParser, video_required: bool = True) -> None:
    g = p.add_argument_group("input")
    g.add_argument("--video", type=Path, required=video_required,
                   help="input video file" + ("" if video_required else
                                              " (none: text to audio, --duration required)"))
    g.add_argument("--prompt", required=True, help="the sound to generate")
    g.add_argument("--duration", type=float, default=None,
                   help="seconds from --start (0 = to the end of the video; default: 8)")
    g.add_argument("--start", type=float, default=0.0,
                   help="seconds into the video where the audio begins (default: 0)")
    g.add_argument("--mask", type=Path, default=None,
                   help="image marking the sound source (white = keep), static over the clip")
    g.add_argument("--mask-strength", type=float, default=1.0, help="0 = no effect, 1 = full (default)")
    g.add_argument("--no-mask-clip", action="store_true", help="do not mask the CLIP frames")
    g.add_argument("--no-mask-sync", action="store_true", help="do not mask the sync frames")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="cache extracted features here (.npz); off when not given")
    g.add_argument("--cache-max-gb", type=float, default=None,
                   help="size cap of the feature cache; least recently used entries go first "
                        "(default: $SELVA_FEATURE_CACHE_GB or 4)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m selva",
        description="SelVA: text-conditioned selective video-to-audio generation.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True)

    from .edit_args import add_edit_args

    gen = sub.add_parser("generate", help="generate audio for a video (or from text alone)")
    _add_feature_args(gen, video_required=False)
    add_model_args(gen)
    add_edit_args(gen)
    g = gen.add_argument_group("sampling")
    g.add_argument("--negative-prompt", default="", help="sounds to steer away from")
    add_sampling_arguments(g)
    g.add_argument("--seed", type=int, default=0, help="noise seed (default: 0, as the Sampler node)")
    g.add_argument("--batch-size", type=int, default=1, help="variations (seed, seed+1, ...)")
    o = gen.add_argument_group("output")
    o.add_argument("--out", type=Path, required=True,
                   help="audio file (.wav .flac .m4a .mp3 .opus); a batch adds _0, _1, ...")
    o.add_argument("--mux", type=Path, default=None, help="also write the video with the new audio")
    o.add_argument("--overwrite", action="store_true", help="replace output files that already exist")

    dl = sub.add_parser("download", help="fetch the weights a variant needs")
    add_model_args(dl)

    feat = sub.add_parser("features", help="extract features to an .npz file")
    _add_feature_args(feat)
    add_model_args(feat)
    feat.add_argument("--out", type=Path, required=True, help="features file (.npz)")
    feat.add_argument("--overwrite", action="store_true", help="replace the file if it exists")

    cache = sub.add_parser("cache", help="show or trim the feature cache")
    what = cache.add_mutually_exclusive_group(required=True)
    what.add_argument("--info", action="store_true", help="entries and size of the cache")
    what.add_argument("--prune", action="store_true",
                      help="remove least recently used entries until the cache fits its cap")
    cache.add_argument("--dir", type=Path, default=None,
                       help="the cache folder (default: <system temp>/selva_features, the one "
                            "the ComfyUI Feature Extractor uses when its cache_dir is empty)")
    cache.add_argument("--max-gb", type=float, default=None,
                       help="the cap (default: $SELVA_FEATURE_CACHE_GB or 4); --prune --max-gb 0 "
                            "empties the cache")

    from .batch.cli import register as register_batch
    from .compat.convert import register as register_convert  # earlier-pack .pt -> safetensors
    from .datasets.cli import register as register_datasets
    from .evaluation.cli import register as register_evaluation
    from .style.cli import register as register_style
    from .train.cli import register as register_training

    # Each module adds its subcommands (in this order, as --help lists them) and returns their
    # handlers, unless it set them itself; those taking model options get the shared ones.
    model = (add_model_args, load_options)
    for register, extra in ((register_training, model), (register_style, model), (register_convert, ()),
                            (register_datasets, ()), (register_batch, model), (register_evaluation, model)):
        for name, handler in (register(sub, *extra) or {}).items():
            sub.choices[name].set_defaults(handler=handler)
    return parser


# -------------------------------------------------------------------------------- commands
def load_options(args: argparse.Namespace) -> Any:
    from .pipeline import LoadOptions

    return LoadOptions(variant=args.variant, precision=args.precision, offload=args.offload,
                       device=args.device, models_dir=args.models_dir, clip_frames=args.clip_frames,
                       allow_download=not args.offline)


def _hooks() -> Any:
    from .hooks import Hooks

    return Hooks(progress=LogProgress())


def _mask(args: argparse.Namespace) -> Any:
    """The --mask options, read before any model loads so that a bad mask file fails at once."""
    from .options import MaskOptions

    return MaskOptions(read_mask(args.mask), args.mask_strength, not args.no_mask_clip, not args.no_mask_sync)


def _features(pipe: Any, args: argparse.Namespace, mask: Any) -> Any:
    from .features import FeatureCache, cache_max_bytes

    return pipe.extract_features(
        args.video, None, args.prompt, duration=8.0 if args.duration is None else args.duration or None, mask=mask,
        cache=FeatureCache(args.cache_dir, cache_max_bytes(args.cache_max_gb)) if args.cache_dir else None,
        hooks=_hooks(), start=args.start)


def cmd_generate(args: argparse.Namespace) -> int:
    from .audio import loudness_normalize
    from .edit_args import edit_from_args
    from .pipeline import SelvaPipeline

    if args.video is None and not args.duration:
        raise SelvaError("Without --video (text to audio), --duration is required: the seconds of audio to make.")
    if args.video is None:  # text to audio: the video options have nothing to act on
        for given, message in ((args.mux is not None, "--mux needs --video: there is no video to put the audio into."),
                               (args.mask is not None, "--mask needs --video: there is no video to mask."),
                               (args.start, "--start needs --video: there is no video to start into.")):
            if given:
                raise SelvaError(message)
    if args.video is not None and not args.video.is_file():
        raise SelvaError(f"Video file not found: {args.video}")
    audio_format(args.out)
    count = args.batch_size
    outputs = [numbered(args.out, i, count) for i in range(count)]
    if args.mux is not None:
        outputs += [numbered(args.mux, i, count) for i in range(count)]
    refuse_to_overwrite(outputs, args.overwrite, inputs=[p for p in (args.video, args.init_audio) if p])
    edit = edit_from_args(args)
    mask = _mask(args)
    pipe = SelvaPipeline.load(load_options(args), hooks=_hooks())
    feats = _features(pipe, args, mask) if args.video is not None else pipe.encoding.text_features(args.prompt,
                                                                                             args.duration)
    wave = pipe.generate(feats, negative_prompt=args.negative_prompt, steps=args.steps,
                         cfg_strength=args.cfg, seed=args.seed, batch_size=args.batch_size,
                         hooks=_hooks(), windows=windows_from_args(args), edit=edit)
    if not args.no_normalize:
        wave = loudness_normalize(wave, pipe.sample_rate, args.target_lufs)
    for i in range(count):
        out = write_audio(numbered(args.out, i, count), wave[i], pipe.sample_rate)
        log.info("Wrote %s (seed %d, %.2f s at %d Hz)", out, args.seed + i,
                 wave.shape[-1] / pipe.sample_rate, pipe.sample_rate)
        if args.mux is not None:
            muxed = mux_video(args.video, wave[i], pipe.sample_rate, numbered(args.mux, i, count),
                              duration=feats.duration, start=feats.start)
            log.info("Wrote %s", muxed)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch (and verify) every file the variant needs, without loading any network."""
    from .loading import resolve_all
    from .variants import get_variant
    from .weights import default_models_dir

    models_dir = args.models_dir or default_models_dir()
    paths = resolve_all(get_variant(args.variant), models_dir, allow_download=not args.offline)
    for key, path in sorted(paths.items()):
        log.info("%-16s %s", key, path)
    log.info("All weights for %s are available.", args.variant)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from .pipeline import SelvaPipeline

    refuse_to_overwrite([args.out], args.overwrite, inputs=[args.video])
    mask = _mask(args)
    pipe = SelvaPipeline.load(load_options(args), hooks=_hooks())
    feats = _features(pipe, args, mask)
    feats.save(args.out)
    log.info("Wrote %s (%.2f s, prompt %r)", args.out, feats.duration, feats.prompt)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .features import FeatureCache, cache_max_bytes, default_cache_dir

    cache = FeatureCache(args.dir or default_cache_dir(), cache_max_bytes(args.max_gb))
    if args.prune:
        removed = cache.prune()
        log.info("Removed %d entries.", len(removed))
    print(cache.info().describe())
    return 0


COMMANDS = {"generate": cmd_generate, "download": cmd_download, "features": cmd_features,
            "cache": cmd_cache}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    restore_logging = setup_logging(args.verbose)
    try:
        handler = getattr(args, "handler", None) or COMMANDS[args.command]
        return handler(args)
    except SelvaError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("Interrupted.")
        return 130
    finally:
        restore_logging()
