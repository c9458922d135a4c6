"""Media files in and out: audio files, the generated audio muxed into its video, mask images.

Everything is written through :func:`selva.artifacts.atomic_path`, so a failed or interrupted
write never leaves half a file under the real name. PyAV does the encoding and muxing.
"""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

from .artifacts import atomic_path
from .errors import SelvaError

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
        with atomic_path(path) as tmp, av.open(str(tmp), "w") as container:
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
        with atomic_path(video_out) as tmp, av.open(str(video_in)) as src, \
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




def read_mask(path: Optional[Path]) -> Any:
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


