"""Command line: ``python -m selva generate | download | features | cache | train-lora | prepare-dataset | skip | train-ti``.

The options mirror the ComfyUI nodes; every piece of model work goes through
:mod:`selva.pipeline`. Audio and muxed video are written with PyAV.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from .errors import SelvaError

# Our package's logger ("selva" when run as ``python -m selva``); the root logger is left alone.
PACKAGE_LOGGER = __name__.rpartition(".")[0] or "selva"
log = logging.getLogger(__name__)

# suffix -> (codec, sample format); .wav is 16-bit PCM, everything PyAV ships an encoder for
AUDIO_CODECS = {
    ".wav": ("pcm_s16le", "s16"),
    ".flac": ("flac", "s16"),
    ".m4a": ("aac", "fltp"),
    ".aac": ("aac", "fltp"),
    ".mp3": ("libmp3lame", "fltp"),
    ".opus": ("libopus", "flt"),
}


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


# ---------------------------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so the format is kept) that replaces
    ``path`` only once writing succeeded: a failed or interrupted run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def refuse_to_overwrite(paths: Sequence[Path], overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    """Fail before any work when an output would replace an input or (without --overwrite) a file."""
    for path in paths:
        if any(path.resolve() == Path(i).resolve() for i in inputs):
            raise SelvaError(f"{path} is an input of this run; choose another output path.")
        if path.exists() and not overwrite:
            raise SelvaError(f"{path} already exists; pass --overwrite to replace it.")


def write_audio(path: Path, wave: Any, sample_rate: int) -> Path:
    """Write one (C, T) float clip in [-1, 1]; the format follows the file suffix."""
    import av
    import numpy as np

    path = Path(path)
    codec, fmt = AUDIO_CODECS.get(path.suffix.lower(), (None, None))
    if codec is None:
        raise SelvaError(f"Unsupported audio format {path.suffix!r}; use one of "
                         f"{', '.join(sorted(AUDIO_CODECS))}.")
    data = np.ascontiguousarray(np.clip(wave.detach().cpu().float().numpy(), -1.0, 1.0))
    try:
        with atomic_output(path) as tmp, av.open(str(tmp), "w") as container:
            stream = container.add_stream(codec, rate=int(sample_rate))
            _configure_audio_stream(stream, data.shape[0], fmt)
            _encode_audio(container, stream, data, int(sample_rate), fmt)
    except av.FFmpegError as e:
        raise SelvaError(f"Could not write {path}: {e}") from e
    return path


def _layout(channels: int) -> str:
    if channels == 1:
        return "mono"
    if channels == 2:
        return "stereo"
    raise SelvaError(f"Only mono and stereo audio can be written, got {channels} channels.")


def _configure_audio_stream(stream: Any, channels: int, fmt: str) -> None:
    """Set layout and sample format; must happen before anything is muxed (that opens codecs)."""
    stream.layout = _layout(channels)
    stream.format = fmt


def _encode_audio(container: Any, stream: Any, data: Any, sample_rate: int, fmt: str) -> None:
    """Encode (C, T) float32 samples into a configured ``stream`` (in the codec's format)."""
    import av
    import numpy as np

    layout = _layout(data.shape[0])
    frame = av.AudioFrame.from_ndarray(data.astype(np.float32), format="fltp", layout=layout)
    frame.sample_rate = sample_rate
    frame.pts = 0
    frame.time_base = Fraction(1, sample_rate)
    # PyAV's resampler converts to the codec's sample format and cuts codec-sized frames.
    resampler = av.AudioResampler(format=fmt, layout=layout, rate=sample_rate,
                                  frame_size=stream.codec_context.frame_size or None)
    for chunk in resampler.resample(frame) + resampler.resample(None):
        for packet in stream.encode(chunk):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def mux_video(video_in: Path, wave: Any, sample_rate: int, video_out: Path,
              duration: Optional[float] = None, start: float = 0.0) -> Path:
    """Copy ``video_in``'s picture (no re-encoding) and add ``wave`` (C, T) as AAC audio.

    The picture is cut to ``duration`` seconds (the audio's length by default) at packet level.
    Both streams start at 0 s: a picture that starts later in its file (MPEG-TS, stream-copied
    cuts) is moved to 0 s, since the audio was made for the frames counted from its start.
    With ``start`` (seconds into the video, as the features were extracted from), the picture
    begins at the last keyframe at or before ``start`` (a copied picture can only begin on
    one) and the audio is delayed by the same gap, so it plays exactly with the frames it was
    made for; the gap (usually well under a second) is silent.
    """
    import av
    import numpy as np

    video_out = Path(video_out)
    data = np.ascontiguousarray(np.clip(wave.detach().cpu().float().numpy(), -1.0, 1.0))
    limit = start + (duration if duration is not None else data.shape[-1] / sample_rate)
    try:
        with atomic_output(video_out) as tmp, av.open(str(video_in)) as src, \
                av.open(str(tmp), "w") as dst:
            if not src.streams.video:
                raise SelvaError(f"{video_in} has no video stream to mux.")
            v_in = src.streams.video[0]
            v_out = dst.add_stream_from_template(v_in)
            a_out = dst.add_stream("aac", rate=int(sample_rate))
            _configure_audio_stream(a_out, data.shape[0], "fltp")
            origin = v_in.start_time  # decode_video counts frame times from here too
            if start > 0:
                src.seek(int((origin or 0) + start / v_in.time_base), stream=v_in, backward=True)
            shift = None  # the first copied frame's pts: it goes to 0 s
            for packet in src.demux(v_in):
                if packet.dts is None:
                    continue
                if origin is None:
                    origin = packet.pts if packet.pts is not None else packet.dts
                if packet.pts is not None and float((packet.pts - origin) * v_in.time_base) >= limit:
                    continue
                if shift is None:
                    if start > 0 and not packet.is_keyframe:
                        continue
                    shift = packet.pts if start > 0 and packet.pts is not None else origin
                elif packet.pts is not None and packet.pts < shift:
                    continue  # leading frames of an open GOP: they need the frames before it
                packet.dts -= shift
                if packet.pts is not None:
                    packet.pts -= shift
                packet.stream = v_out
                dst.mux(packet)
            if start > 0:
                gap = start - float(((shift if shift is not None else origin) - (origin or 0)) * v_in.time_base)
                shift_samples = int(round(gap * sample_rate))
                # a later first keyframe (a seek that found none before start) cuts the audio instead
                data = np.pad(data, ((0, 0), (shift_samples, 0))) if shift_samples >= 0 \
                    else np.ascontiguousarray(data[:, -shift_samples:])
            _encode_audio(dst, a_out, data, int(sample_rate), "fltp")
    except av.FFmpegError as e:
        raise SelvaError(f"Could not mux audio into {video_out}: {e}") from e
    return video_out


def numbered(path: Path, index: int, count: int) -> Path:
    """``out.wav`` for a single clip, ``out_0.wav``, ``out_1.wav``... for a batch."""
    path = Path(path)
    return path if count == 1 else path.with_name(f"{path.stem}_{index}{path.suffix}")


# ------------------------------------------------------------------------------- arguments
def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .offload import OFFLOAD_STRATEGIES, PRECISIONS
    from .variants import VARIANTS

    g = p.add_argument_group("model")
    g.add_argument("--variant", default="small_16k", choices=list(VARIANTS),
                   help="model size / sample rate (default: small_16k)")
    g.add_argument("--precision", default="bf16", choices=list(PRECISIONS),
                   help="compute precision (default: bf16; fp16 on GPUs without bf16)")
    g.add_argument("--offload", default="auto", choices=list(OFFLOAD_STRATEGIES),
                   help="keep_in_vram, offload_to_cpu, or auto by free VRAM (default: auto); on a "
                        "CPU-only machine offload_to_cpu releases each network after use (least RAM)")
    g.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    g.add_argument("--models-dir", type=Path, default=None,
                   help="folder with the weights (default: $SELVA_MODELS_DIR or ./models/selva)")
    g.add_argument("--clip-frames", action="store_true",
                   help="feed CLIP image features of the video (the official demo does not)")
    g.add_argument("--offline", action="store_true", help="never download; fail if weights are missing")


def _add_feature_args(p: argparse.ArgumentParser, prompt_required: bool = True) -> None:
    g = p.add_argument_group("input")
    g.add_argument("--video", type=Path, required=True, help="input video file")
    g.add_argument("--prompt", required=prompt_required, default="", help="the sound to generate")
    g.add_argument("--duration", type=float, default=8.0,
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

    gen = sub.add_parser("generate", help="generate audio for a video")
    _add_feature_args(gen)
    _add_model_args(gen)
    g = gen.add_argument_group("sampling")
    g.add_argument("--negative-prompt", default="", help="sounds to steer away from")
    g.add_argument("--steps", type=int, default=25, help="Euler steps (default: 25)")
    g.add_argument("--cfg", "--cfg-strength", dest="cfg", type=float, default=4.5,
                   help="classifier-free guidance strength (default: 4.5)")
    g.add_argument("--seed", type=int, default=42, help="noise seed (default: 42)")
    g.add_argument("--batch-size", type=int, default=1, help="variations (seed, seed+1, ...)")
    g.add_argument("--no-normalize", action="store_true", help="skip loudness normalisation")
    g.add_argument("--target-lufs", type=float, default=-27.0, help="loudness target (default: -27)")
    g.add_argument("--window-seconds", type=float, default=8.0,
                   help="longer clips are sampled in overlapping windows of this length (default: 8)")
    g.add_argument("--overlap-seconds", type=float, default=2.56,
                   help="overlap of neighbouring windows (default: 2.56)")
    o = gen.add_argument_group("output")
    o.add_argument("--out", type=Path, required=True,
                   help="audio file (.wav .flac .m4a .mp3 .opus); a batch adds _0, _1, ...")
    o.add_argument("--mux", type=Path, default=None, help="also write the video with the new audio")
    o.add_argument("--overwrite", action="store_true", help="replace output files that already exist")

    dl = sub.add_parser("download", help="fetch the weights a variant needs")
    _add_model_args(dl)

    feat = sub.add_parser("features", help="extract features to an .npz file")
    _add_feature_args(feat)
    _add_model_args(feat)
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

    from .train.cli import register as register_training

    for name, handler in register_training(sub, _add_model_args, _load_options).items():
        sub.choices[name].set_defaults(handler=handler)
    from .style.cli import register as register_style

    for name, handler in register_style(sub, _add_model_args, _load_options).items():
        sub.choices[name].set_defaults(handler=handler)
    from .evaluation.cli import register as register_evaluation

    for name, handler in register_evaluation(sub, _add_model_args, _load_options).items():
        sub.choices[name].set_defaults(handler=handler)
    return parser


# -------------------------------------------------------------------------------- commands
def _load_options(args: argparse.Namespace) -> Any:
    from .pipeline import LoadOptions

    return LoadOptions(variant=args.variant, precision=args.precision, offload=args.offload,
                       device=args.device, models_dir=args.models_dir, clip_frames=args.clip_frames,
                       allow_download=not args.offline)


def _hooks() -> Any:
    from .hooks import Hooks

    return Hooks(progress=LogProgress())


def _read_mask(path: Optional[Path]) -> Any:
    """A mask image as (1, H, W) float in [0, 1] (its first channel; white = keep)."""
    if path is None:
        return None
    import av
    import torch

    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            gray = frame.to_ndarray(format="gray")
    except (av.FFmpegError, StopIteration, OSError) as e:
        raise SelvaError(f"Could not read the mask image {path}: {e}") from e
    return torch.from_numpy(gray.astype("float32") / 255.0)[None]


def _features(pipe: Any, args: argparse.Namespace) -> Any:
    from .features import FeatureCache, cache_max_bytes

    return pipe.extract_features_from_video(
        args.video, args.prompt, duration=args.duration or None, mask=_read_mask(args.mask),
        mask_strength=args.mask_strength, mask_clip=not args.no_mask_clip,
        mask_sync=not args.no_mask_sync,
        cache=FeatureCache(args.cache_dir, cache_max_bytes(args.cache_max_gb)) if args.cache_dir else None,
        hooks=_hooks(), start=args.start)


def cmd_generate(args: argparse.Namespace) -> int:
    from .audio import loudness_normalize
    from .long_video import WindowOptions
    from .pipeline import SelvaPipeline

    if not args.video.is_file():
        raise SelvaError(f"Video file not found: {args.video}")
    if args.out.suffix.lower() not in AUDIO_CODECS:
        raise SelvaError(f"Unsupported audio format {args.out.suffix!r}; use one of "
                         f"{', '.join(sorted(AUDIO_CODECS))}.")
    count = args.batch_size
    outputs = [numbered(args.out, i, count) for i in range(count)]
    if args.mux is not None:
        outputs += [numbered(args.mux, i, count) for i in range(count)]
    refuse_to_overwrite(outputs, args.overwrite, inputs=[args.video])
    pipe = SelvaPipeline.load(_load_options(args), hooks=_hooks())
    feats = _features(pipe, args)
    wave = pipe.generate(feats, negative_prompt=args.negative_prompt, steps=args.steps,
                         cfg_strength=args.cfg, seed=args.seed, batch_size=args.batch_size,
                         hooks=_hooks(), windows=WindowOptions(args.window_seconds, args.overlap_seconds))
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
    pipe = SelvaPipeline.load(_load_options(args), hooks=_hooks())
    feats = _features(pipe, args)
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
