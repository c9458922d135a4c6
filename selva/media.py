"""Media files in and out: audio files, the generated audio muxed into its video, mask images.

Everything is written through :func:`selva.artifacts.atomic_path`, so a failed or interrupted
write never leaves half a file under the real name. PyAV does the encoding and muxing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Optional

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
# the rates libopus encodes; others are resampled to 48 kHz, the rate every Opus decoder gives back
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def _audio_array(wave: Any) -> Any:
    import numpy as np

    return np.ascontiguousarray(np.clip(wave.detach().cpu().float().numpy(), -1.0, 1.0))


def audio_format(path: Path) -> tuple[str, str]:
    """(codec, sample format) that :func:`write_audio` uses for ``path``'s suffix; a clear error
    for a suffix it cannot write (callers check it before any work)."""
    suffix = Path(path).suffix
    if suffix.lower() not in AUDIO_CODECS:
        raise SelvaError(f"Unsupported audio format {suffix!r}; use one of {', '.join(sorted(AUDIO_CODECS))}.")
    return AUDIO_CODECS[suffix.lower()]


def write_audio(path: Path, wave: Any, sample_rate: int) -> Path:
    """Write one (C, T) float clip in [-1, 1]; the format follows the file suffix."""
    import av

    path = Path(path)
    codec, fmt = audio_format(path)
    data = _audio_array(wave)
    rate = int(sample_rate)
    encoded = 48000 if codec == "libopus" and rate not in _OPUS_RATES else rate
    try:
        with atomic_path(path) as tmp, av.open(str(tmp), "w") as container:
            stream = container.add_stream(codec, rate=encoded)
            _configure_audio_stream(stream, data.shape[0], fmt)
            _encode_audio(container, stream, data, rate, fmt)
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
    """Encode (C, T) contiguous float32 samples at ``sample_rate`` (as :func:`_audio_array`
    gives them) into a configured ``stream`` (in the codec's format and rate)."""
    import av

    layout = _layout(data.shape[0])
    frame = av.AudioFrame.from_ndarray(data, format="fltp", layout=layout)
    frame.sample_rate = sample_rate
    frame.pts = 0
    frame.time_base = Fraction(1, sample_rate)
    # PyAV's resampler converts to the codec's sample format and rate and cuts codec-sized frames.
    resampler = av.AudioResampler(format=fmt, layout=layout, rate=stream.rate,
                                  frame_size=stream.codec_context.frame_size or None)
    for chunk in resampler.resample(frame) + resampler.resample(None):
        for packet in stream.encode(chunk):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def _delay_audio(data: Any, gap: float, sample_rate: int) -> Any:
    """``gap`` seconds of silence before ``data`` (a negative gap cuts that much off its start)."""
    import numpy as np

    samples = int(round(gap * sample_rate))
    if samples >= 0:
        return np.pad(data, ((0, 0), (samples, 0)))
    return np.ascontiguousarray(data[:, -samples:])


def _aac_stream(dst: Any, sample_rate: int, channels: int, suffix: str) -> Any:
    """The muxed video's audio stream, configured; a clear error for a container without AAC."""
    import av

    try:
        stream = dst.add_stream("aac", rate=int(sample_rate))
    except (av.FFmpegError, ValueError) as e:
        raise SelvaError(f"A {suffix} file cannot hold AAC audio; write the muxed video as .mp4, "
                         f".mkv or .mov instead.") from e
    _configure_audio_stream(stream, channels, "fltp")
    return stream


class _NotCopyable(Exception):
    """A stream copy of this source cannot give a playable file; the picture is re-encoded."""


@dataclass
class _Span:
    """The packets of the source's picture that the copy keeps, worked out before writing."""

    origin: int  # the stream's first timestamp: frame times count from here (as decode_video)
    shift: int  # pts of the first kept packet (a keyframe): it goes to 0 s in the output
    keep: list[int]  # indices (in demux order from the seek point) of the packets kept
    dts: Optional[list[int]]  # derived decode times of the kept packets, when the source lacks some


def _origin(video_in: Path, v_in: Any) -> int:
    """The timestamp frame times count from (as :func:`selva.video.decode_video` counts them):
    the stream's start time, else its first packet's (raw streams such as MJPEG have none). Read
    from the file's beginning, never after a seek to ``start``."""
    if v_in.start_time is not None:
        return v_in.start_time
    import av

    with av.open(str(video_in)) as src:
        first = next(src.demux(src.streams.video[0]), None)
    if first is None:  # no packet at all: the plan and the re-encode say so
        return 0
    stamp = first.pts if first.pts is not None else first.dts
    return stamp if stamp is not None else 0


def _seek(src: Any, v_in: Any, origin: int, start: float) -> None:
    """Seek to the keyframe at or before ``start`` seconds from ``origin``."""
    if start > 0:
        src.seek(int(origin + start / v_in.time_base), stream=v_in, backward=True)


def _packets(src: Any, v_in: Any, origin: int, start: float) -> Iterator[tuple[int, Any]]:
    """The picture's packets from the seek to ``start``, numbered in demux order (the demuxer's
    closing flush packet left out). The packet plan and the copy both read through here with
    the same origin: one number is one packet in both."""
    _seek(src, v_in, origin, start)
    return enumerate(p for p in src.demux(v_in) if p.size or p.pts is not None or p.dts is not None)


def _plan_copy(src: Any, v_in: Any, origin: int, start: float, limit: float) -> _Span:
    """Which packets to copy, read from the packets' timestamps only (nothing is decoded).

    Kept: from the first keyframe at or after the seek point, every packet whose pts falls
    before ``limit`` (seconds from the stream's start), and the packets that precede one of
    those in decode order (the reference frames of the last B-frames; dropping them would leave
    those frames undecodable). Leading frames of an open GOP (pts before the keyframe's) need
    frames before the cut and are left out. Packets without a DTS (Matroska stores none; the
    demuxer leaves it unset on the first frames of B-frame video) are kept, and the kept span
    gets DTS derived from its pts: the sorted pts moved back by the reorder depth.
    """
    stamps: list[tuple[Optional[int], Optional[int]]] = []  # (pts, dts) of candidates
    indices: list[int] = []  # their numbers from _packets
    shift = None
    for index, packet in _packets(src, v_in, origin, start):
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is None:
            raise _NotCopyable("a picture packet has neither a presentation nor a decode time")
        if shift is None:
            if not packet.is_keyframe:
                continue  # a copied picture can only begin on a keyframe
            shift = pts
        elif packet.pts is not None and packet.pts < shift:
            continue  # leading frames of an open GOP: they need the frames before the cut
        stamps.append((packet.pts, packet.dts))
        indices.append(index)
        if float((pts - origin) * v_in.time_base) >= limit + 2:
            break  # well past the span (B-frame reordering reaches a few frames): nothing more needed
    if shift is None:
        raise _NotCopyable("no keyframe was found in the wanted span")
    times = [p if p is not None else d for p, d in stamps]
    inside = [i for i, t in enumerate(times) if float((t - origin) * v_in.time_base) < limit]
    if not inside:
        raise _NotCopyable("no picture packet falls inside the audio's span")
    n = inside[-1] + 1  # kept: the candidates up to the last one inside
    dts = None
    if any(d is None for _, d in stamps[:n]):
        pts = times[:n]
        ordered = sorted(pts)
        if len(set(ordered)) != len(ordered):
            raise _NotCopyable("picture packets without decode times share presentation times")
        delay = max(0, max(o - p for o, p in zip(ordered, pts)))
        dts = [o - delay for o in ordered]
    return _Span(origin=origin, shift=shift, keep=indices[:n], dts=dts)


def _copy_picture(video_in: Path, tmp: Path, data: Any, sample_rate: int, start: float,
                  limit: float) -> None:
    """Write the stream copy of the span with ``data`` as AAC into ``tmp``."""
    import av

    with av.open(str(video_in)) as src:
        if not src.streams.video:
            raise SelvaError(f"{video_in} has no video stream to mux.")
        v_in = src.streams.video[0]
        span = _plan_copy(src, v_in, _origin(video_in, v_in), start, limit)
    with av.open(str(video_in)) as src, av.open(str(tmp), "w") as dst:
        v_in = src.streams.video[0]
        try:
            v_out = dst.add_stream_from_template(v_in)
        except (av.FFmpegError, ValueError) as e:
            raise _NotCopyable(f"a {tmp.suffix} file cannot hold this picture's codec ({e})") from e
        a_out = _aac_stream(dst, sample_rate, data.shape[0], tmp.suffix)
        place = {index: k for k, index in enumerate(span.keep)}  # packet number -> place in the span
        for index, packet in _packets(src, v_in, span.origin, start):  # the plan's packets
            if index > span.keep[-1]:
                break
            if index not in place:
                continue
            if span.dts is not None:
                packet.dts = span.dts[place[index]]
            if packet.pts is not None:
                packet.pts -= span.shift
            packet.dts -= span.shift
            packet.stream = v_out
            try:
                dst.mux(packet)
            except av.FFmpegError as e:
                raise _NotCopyable(f"the muxer refused the copied picture ({e})") from e
        gap = start - float((span.shift - span.origin) * v_in.time_base)
        _encode_audio(dst, a_out, _delay_audio(data, gap, sample_rate), int(sample_rate), "fltp")


def _reencode_picture(video_in: Path, tmp: Path, data: Any, sample_rate: int, start: float,
                      limit: float) -> None:
    """Decode the span's frames and write them as H.264 (source size and timing) with the audio."""
    import av

    with av.open(str(video_in)) as src, av.open(str(tmp), "w") as dst:
        v_in = src.streams.video[0]
        rate = v_in.average_rate or v_in.guessed_rate or 25
        v_out = dst.add_stream("libx264", rate=rate)
        a_out = _aac_stream(dst, sample_rate, data.shape[0], tmp.suffix)
        v_out.width = v_in.codec_context.width // 2 * 2  # 4:2:0 wants even sizes
        v_out.height = v_in.codec_context.height // 2 * 2
        v_out.pix_fmt = "yuv420p"
        v_out.codec_context.time_base = v_in.time_base
        v_out.options = {"preset": "veryfast", "crf": "18"}
        origin = _origin(video_in, v_in)
        _seek(src, v_in, origin, start)
        first = None
        for frame in src.decode(v_in):
            if frame.pts is None:
                continue
            t = float((frame.pts - origin) * v_in.time_base)
            if t < start - 1e-6:
                continue
            if t >= limit:
                break
            first = frame.pts if first is None else first
            # a full-range source (MJPEG, some phones) becomes the limited range H.264 is read as
            out = frame.reformat(width=v_out.width, height=v_out.height, format="yuv420p",
                                 src_color_range=frame.color_range, dst_color_range="MPEG")
            out.pts, out.time_base = frame.pts - first, v_in.time_base
            out.pict_type = av.video.frame.PictureType.NONE
            for packet in v_out.encode(out):
                dst.mux(packet)
        for packet in v_out.encode(None):
            dst.mux(packet)
        if first is None:
            raise SelvaError(f"{video_in} has no picture within the audio's span to mux.")
        gap = start - float((first - origin) * v_in.time_base)
        _encode_audio(dst, a_out, _delay_audio(data, gap, sample_rate), int(sample_rate), "fltp")


def check_playable(path: Path, probe_packets: int = 64) -> Optional[str]:
    """Why ``path``'s picture would not play (None when it does).

    Its first video packet must be a keyframe, and the first ``probe_packets`` packets must
    decode to as many frames (a file starting on a frame whose references are missing loses
    every frame until the next keyframe).
    """
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                return "the result has no video stream"
            v = c.streams.video[0]
            fed = decoded = 0
            for packet in c.demux(v):
                if packet.size == 0:
                    continue
                if fed == 0 and not packet.is_keyframe:
                    return "its first picture packet is not a keyframe"
                fed += 1
                decoded += len(v.codec_context.decode(packet))
                if fed >= probe_packets:
                    break
            decoded += len(v.codec_context.decode(None))
    except av.FFmpegError as e:
        return f"its picture does not decode ({e})"
    if fed == 0:
        return "the result holds no picture"
    if decoded < fed - 1:  # one spare: packed MPEG-4 bitstreams carry an empty placeholder packet
        return f"only {decoded} of its first {fed} pictures decode"
    return None


def copy_suffix(video_in: Path) -> str:
    """``.mp4`` when an MP4 file can hold ``video_in``'s picture as it is, else ``.mkv``.

    MP4 first: it stores every packet's decode time, so a later stream copy (ComfyUI's Save
    Video drops packets without one) keeps every frame; Matroska stores none, and its reader
    leaves the first packets of B-frame video without a decode time.
    """
    import io

    import av

    try:
        with av.open(str(video_in)) as src, av.open(io.BytesIO(), "w", format="mp4") as probe:
            if not src.streams.video:
                raise SelvaError(f"{video_in} has no video stream to mux.")
            probe.add_stream_from_template(src.streams.video[0])
    except (av.FFmpegError, ValueError):
        return ".mkv"
    return ".mp4"


def mux_video(video_in: Path, wave: Any, sample_rate: int, video_out: Path,
              duration: Optional[float] = None, start: float = 0.0) -> Path:
    """``video_in``'s picture with ``wave`` (C, T) as AAC audio, written to ``video_out``.

    The picture is copied, not re-encoded, cut to ``duration`` seconds (the audio's length by
    default) at packet level. Both streams start at 0 s: a picture that starts later in its
    file (MPEG-TS, stream-copied cuts) is moved to 0 s, since the audio was made for the frames
    counted from its start. With ``start`` (seconds into the video, as the features were
    extracted from), the picture begins at the last keyframe at or before ``start`` (a copied
    picture can only begin on one) and the audio is delayed by the same gap, so it plays
    exactly with the frames it was made for; the gap (usually well under a second) is silent.

    The result is checked (:func:`check_playable`); when a stream copy cannot give a playable
    file (a codec the container cannot hold, timestamps the muxer refuses, a picture that does
    not decode), the span is re-encoded as H.264 at the source's size and timing instead, with
    one log line saying why. See ``docs/media.md``.
    """
    import av

    video_in, video_out = Path(video_in), Path(video_out)
    data = _audio_array(wave)
    limit = start + (duration if duration is not None else data.shape[-1] / sample_rate)
    with atomic_path(video_out) as tmp:
        try:
            try:
                _copy_picture(video_in, tmp, data, sample_rate, start, limit)
                reason = check_playable(tmp)
            except _NotCopyable as e:
                reason = str(e)
            if reason is not None:
                log.warning("Re-encoding the picture of %s as H.264 for %s: a stream copy would not "
                            "play (%s).", video_in.name, video_out.name, reason)
                _reencode_picture(video_in, tmp, data, sample_rate, start, limit)
                still = check_playable(tmp)
                if still is not None:
                    raise SelvaError(f"Could not make a playable video from {video_in}: {still}.")
        except av.FFmpegError as e:
            raise SelvaError(f"Could not mux audio into {video_out}: {e}") from e
    return video_out


def read_mask(path: Optional[Path]) -> Any:
    """A mask image as (1, H, W) float in [0, 1] (its brightness; white = keep)."""
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


