"""Video frames for SelVA: frame selection, resizing, masking and streaming decode.

SelVA looks at a video twice: CLIP sees 384x384 frames at 8 fps and the sync encoder sees
224x224 frames at 25 fps. Both streams are picked from the same source frames by one rule: the
output frame ``k`` of a stream at ``r`` fps (time ``k / r``) is the first source frame whose time
is at or after ``k / r``. The official reader accumulates ``1 / fps`` in floats, which shifts
some 25 fps frames and drops the last frame of an exact-length 25 fps clip; we deliberately use
exact timing (``Fraction``) so every frame we are given is used, and parity is checked on
identical frames. Frame counts and the duration clamp otherwise follow the reference's
``load_video``.

Layout: frame stacks handed around inside the package are ``(T, 3, H, W)``; inputs may be
``(T, H, W, 3)`` as ComfyUI IMAGE tensors and decoded frames are.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SelvaError

log = logging.getLogger(__name__)

CLIP_FPS = 8
CLIP_SIZE = 384
SYNC_FPS = 25
SYNC_SIZE = 224
SYNC_SEGMENT_FRAMES = 16  # the sync encoder reads 16-frame segments: less video than that is unusable
MIN_DURATION = SYNC_SEGMENT_FRAMES / SYNC_FPS

# Float times and rates are snapped to the nearest fraction with at most this denominator, so that
# 0.12 s means 3/25 s exactly and 29.97002997 fps means 30000/1001.
_MAX_DENOMINATOR = 1_000_000
_MASK_SNAP = 1e-5
_RESIZE_CHUNK = 16  # source frames converted and resized at a time (bounds temporary memory)

Number = Union[int, float, Fraction]


def _exact(value: Number, what: str) -> Fraction:
    if isinstance(value, Fraction):
        return value
    if isinstance(value, (int, np.integer)):
        return Fraction(int(value))
    value = float(value)
    if not math.isfinite(value):
        raise SelvaError(f"{what} must be a finite number, got {value}.")
    return Fraction(value).limit_denominator(_MAX_DENOMINATOR)


# ------------------------------------------------------------------------------ frame selection
class _RateSelector:
    """Online form of the selection rule for one output rate (frames must arrive in time order)."""

    def __init__(self, fps: Fraction):
        self.fps = fps
        self.indices: list[int] = []

    def feed(self, index: int, time: Fraction) -> int:
        """Give this source frame to every still-empty output slot at or before ``time``."""
        taken = 0
        while len(self.indices) <= time * self.fps:  # slot time len/fps <= time, exactly
            self.indices.append(index)
            taken += 1
        return taken


def _given_times(frame_times: Sequence[Number]) -> list[Fraction]:
    times = [_exact(t, "frame time") for t in frame_times]
    for i in range(1, len(times)):
        if times[i] < times[i - 1]:
            raise SelvaError(f"Frame times must not decrease: frame {i} is at {float(times[i]):.6f} s, "
                             f"before frame {i - 1} at {float(times[i - 1]):.6f} s.")
    return times


class _Walk:
    """Feeds frames in time order to the 8 fps and 25 fps selectors, honouring the end time."""

    def __init__(self, end: Optional[Fraction]):
        self.end = end
        self.clip = _RateSelector(Fraction(CLIP_FPS))
        self.sync = _RateSelector(Fraction(SYNC_FPS))
        self.last_time: Optional[Fraction] = None
        self.latest: Optional[Fraction] = None  # time of the latest frame, used or not
        self.finished = False  # a frame past the end was seen

    def feed(self, index: int, time: Fraction) -> tuple[int, int]:
        """How many clip and sync slots this frame fills (the reference's skip/stop rules)."""
        self.latest = time
        if time < 0:
            return 0, 0
        if self.end is not None and time > self.end:
            self.finished = True
            return 0, 0
        self.last_time = time
        return self.clip.feed(index, time), self.sync.feed(index, time)


def _settle(clip_idx: list[int], sync_idx: list[int], requested: Fraction,
            user_asked: bool) -> tuple[list[int], list[int], float]:
    """Clamp the duration to what both streams cover and cut them to it, as load_video does."""
    duration = min(requested, Fraction(len(clip_idx), CLIP_FPS), Fraction(len(sync_idx), SYNC_FPS))
    n_clip, n_sync = math.floor(CLIP_FPS * duration), math.floor(SYNC_FPS * duration)
    if duration < requested:
        report = log.warning if user_asked else log.debug
        report("Video covers only %.3f s; using that instead of the requested %.3f s.",
               float(duration), float(requested))
    if n_sync < SYNC_SEGMENT_FRAMES:
        raise SelvaError(
            f"The video is too short: SelVA needs at least {SYNC_SEGMENT_FRAMES} frames at {SYNC_FPS} fps "
            f"({MIN_DURATION:.2f} s), but only {float(duration):.3f} s could be used. Use a longer clip or "
            f"a longer duration.")
    return clip_idx[:n_clip], sync_idx[:n_sync], float(duration)


def _finish(walk: _Walk, requested: Optional[Fraction], interval: Optional[Fraction], start: Fraction):
    """Settle a finished walk; without a requested duration the whole video counts."""
    if start > 0:
        _check_start(walk, requested, interval, start)
    if walk.last_time is None:
        raise SelvaError(f"No video frame lies inside the requested time span; SelVA needs at least "
                         f"{MIN_DURATION:.2f} s of video.")
    # without a requested duration, a video lasts until its last frame has been shown for one
    # frame interval
    target = requested if requested is not None else walk.last_time + (interval or 0)
    return _settle(walk.clip.indices, walk.sync.indices, target, requested is not None)


def _check_start(walk: _Walk, requested: Optional[Fraction], interval: Optional[Fraction],
                 start: Fraction) -> None:
    """A start past the end, or leaving less than one sync segment, is the user's to fix."""
    if walk.latest is None:
        raise SelvaError("The video has no frames.")
    if walk.finished:
        return  # the video goes on past the requested end: the start is not what is short
    step = interval or 0
    end = start + walk.latest + step  # how long the video lasts
    # the last start that still gives 16 sync frames and enough 8 fps frames to cover them
    latest_start = max(math.floor(100 * float(end - step - Fraction(5, CLIP_FPS))) / 100, 0.0)
    if walk.last_time is None:
        raise SelvaError(f"start {float(start):.2f} s is at or beyond the end of the video "
                         f"({float(end):.2f} s long): choose a start of at most {latest_start:.2f} s.")
    left = walk.last_time + step
    usable = min(requested or left, left, Fraction(len(walk.clip.indices), CLIP_FPS),
                 Fraction(len(walk.sync.indices), SYNC_FPS))
    if math.floor(SYNC_FPS * usable) < SYNC_SEGMENT_FRAMES:
        raise SelvaError(f"start {float(start):.2f} s leaves only {float(left):.2f} s of the "
                         f"{float(end):.2f} s video; SelVA needs at least {MIN_DURATION:.2f} s: "
                         f"choose a start of at most {latest_start:.2f} s.")


def _typical_interval(times: Sequence[Fraction]) -> Optional[Fraction]:
    gaps = sorted(b - a for a, b in zip(times, times[1:]) if b > a)
    return gaps[len(gaps) // 2] if gaps else None


# -------------------------------------------------------------------------------- pixel helpers
def resize_uint8(frames_u8: torch.Tensor, size: int) -> torch.Tensor:
    """Square bicubic antialiased resize of ``(T, H, W, 3)`` uint8 frames (checked by the callers,
    :func:`prepare_frames` and :func:`decode_video`), returned as ``(T, 3, size, size)`` uint8.

    Bit-identical to torchvision's ``v2.Resize((size, size), BICUBIC, antialias=True)`` on a uint8
    tensor on the CPU, which hands uint8 straight to ``interpolate``'s native uint8 kernel.
    The work is always done on the CPU because that kernel is what the reference ran.
    """
    if frames_u8.dtype != torch.uint8:
        raise SelvaError(f"resize_uint8 needs uint8 frames, got {frames_u8.dtype}.")
    # The reference resizes HWC frames viewed as NCHW (channels-last memory); feed the kernel the
    # same layout so that it takes the same code path.
    nchw = frames_u8.cpu().contiguous().permute(0, 3, 1, 2)
    if nchw.shape[-2:] == (size, size):
        return nchw.contiguous()
    out = F.interpolate(nchw, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.contiguous()


def to_float01(frames_u8: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1], computed as torchvision's ToDtype(float32, scale=True)."""
    return frames_u8.to(torch.float32).mul_(1.0 / 255)


def normalize_sync(frames01: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] for the sync encoder: (x - 0.5) / 0.5."""
    return (frames01 - 0.5) / 0.5


def _to_uint8_thwc(frames: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE floats in [0, 1] -> uint8 by round(x * 255) (half to even), clamped.

    Frames decoded from a video and divided by 255 come back to their exact original bytes;
    uint8 input passes through untouched.
    """
    if frames.dtype == torch.uint8:
        return frames
    if not frames.is_floating_point():
        raise SelvaError(f"Frames must be uint8 or float in [0, 1], got {frames.dtype}.")
    scaled = frames.to(torch.float32) * 255
    if not bool(torch.isfinite(scaled).all()):
        raise SelvaError("Frames contain NaN or infinite values.")
    return scaled.round_().clamp_(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------- masks
def apply_mask(frames01: torch.Tensor, mask: torch.Tensor, strength: float) -> torch.Tensor:
    """Grey out the background (mask 0) of ``(T, 3, H, W)`` frames in [0, 1].

    ``mask`` is ``(1 or T, H', W')`` in [0, 1] (1 = keep); it is resized bilinearly to the frame
    size. Per pixel ``w = 1 - strength * (1 - mask)`` and ``out = x * w + 0.5 * (1 - w)``, so
    strength 0 changes nothing and a full-strength background becomes exactly 0.5 (0 after
    :func:`normalize_sync`).
    """
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise SelvaError(f"Mask strength must be between 0 and 1, got {strength}.")
    if frames01.ndim != 4:
        raise SelvaError(f"apply_mask expects (T, 3, H, W) frames, got shape {tuple(frames01.shape)}.")
    mask = _mask_stack(mask)
    t, _, h, w = frames01.shape
    if mask.shape[0] not in (1, t):
        raise SelvaError(f"The mask has {mask.shape[0]} frames; expected 1 (static) or {t}.")
    if strength == 0.0:
        return frames01
    m = _resize_mask_to(mask.to(device=frames01.device), h, w)
    keep = 1.0 - strength * (1.0 - m)
    keep = keep[:, None]  # broadcast over the colour channels
    out = frames01.to(torch.float32) * keep + 0.5 * (1.0 - keep)
    return out.to(frames01.dtype)


def resize_mask(mask: Union[torch.Tensor, np.ndarray], size: int) -> torch.Tensor:
    """``(H, W)`` or ``(N, H, W)`` mask -> ``(N, size, size)`` float32 in [0, 1], bilinear."""
    return _resize_mask_to(_mask_stack(mask), size, size)


def _resize_mask_to(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    m = mask.to(torch.float32)
    if m.shape[-2:] != (h, w):
        # antialiased so that a fine mask shrunk to 224 keeps its area, not a sampled grid of it
        m = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[:, 0]
        # the filter weights sum to 1 only up to rounding: keep fully kept / fully masked areas exact
        m = torch.where(m > 1 - _MASK_SNAP, 1.0, torch.where(m < _MASK_SNAP, 0.0, m))
    return m.clamp(0.0, 1.0)


def _mask_stack(mask: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise SelvaError(f"A mask must be (H, W) or (frames, H, W), got shape {tuple(mask.shape)}.")
    if mask.numel() == 0:
        raise SelvaError(f"The mask is empty (shape {tuple(mask.shape)}).")
    if not mask.is_floating_point():  # bool and integer masks
        mask = mask.to(torch.float32)
    return mask


def warn_if_mask_stretched(mask: Union[torch.Tensor, np.ndarray], source_size: Optional[tuple[int, int]],
                           tolerance: float = 0.02) -> None:
    """Warn when a mask's aspect ratio differs from the video's: it would be stretched to fit."""
    if source_size is None:
        return
    mh, mw = _mask_stack(mask).shape[-2:]
    vh, vw = source_size
    if abs((mw / mh) / (vw / vh) - 1.0) > tolerance:
        log.warning("The mask is %dx%d but the video is %dx%d: the mask is stretched to the video's "
                    "shape. Make the mask from the same video to keep it aligned.", mw, mh, vw, vh)


def mask_frames(mask: Union[torch.Tensor, np.ndarray]) -> int:
    """How many frames a mask has (1 = a static mask)."""
    return int(_mask_stack(mask).shape[0])


def mask_for_indices(mask: Union[torch.Tensor, np.ndarray], indices: Sequence[int],
                     n_source_frames: Optional[int]) -> torch.Tensor:
    """Pick the mask frames that go with the selected source frames (a 1-frame mask is static)."""
    mask = _mask_stack(mask)
    n = mask.shape[0]
    if n == 1:
        return mask
    if n_source_frames is not None and n != n_source_frames:
        raise SelvaError(f"The mask has {n} frames but the video has {n_source_frames}; give a mask with "
                         f"1 frame (static) or one per video frame.")
    if indices and max(indices) >= n:
        raise SelvaError(f"The mask has {n} frames but frame {max(indices)} of the video is used.")
    return mask[list(indices)]


# ------------------------------------------------------------------------------- prepared video
@dataclass(frozen=True)
class PreparedFrames:
    """The two frame streams SelVA needs, as resized uint8 ``(T, 3, H, W)`` stacks."""

    clip_u8: torch.Tensor  # (Tc, 3, 384, 384), 8 fps
    sync_u8: torch.Tensor  # (Ts, 3, 224, 224), 25 fps
    duration: float  # seconds the result covers (may be shorter than requested)
    fps: Optional[float]  # source frame rate (estimated when only frame times were known)
    clip_indices: tuple[int, ...]  # source frame used for each clip frame
    sync_indices: tuple[int, ...]  # source frame used for each sync frame
    n_source_frames: Optional[int]  # frames in the whole video; None when not counted
    source_size: Optional[tuple[int, int]] = None  # (height, width) of the source frames
    start: float = 0.0  # seconds into the video where the result begins

    def clip_frames(self) -> torch.Tensor:
        """CLIP input without a mask: float32 in [0, 1] (the pipeline masks on its own)."""
        return to_float01(self.clip_u8)


def _frame_stack(frames: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
    frames = torch.as_tensor(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise SelvaError(f"Expected frames as (T, H, W, 3) RGB, got shape {tuple(frames.shape)}.")
    if frames.shape[0] == 0:
        raise SelvaError(f"The video has no frames; SelVA needs at least {MIN_DURATION:.2f} s.")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise SelvaError(f"Frames have an empty size: {tuple(frames.shape)}.")
    return frames


def _resize_selected(frames: torch.Tensor, clip_idx: list[int], sync_idx: list[int],
                     on_frame: Optional[Callable[[int], None]] = None):
    """Convert and resize only the source frames that are used, each once."""
    clip_set, sync_set = set(clip_idx), set(sync_idx)
    used = sorted(clip_set | sync_set)
    clip_of: dict[int, torch.Tensor] = {}
    sync_of: dict[int, torch.Tensor] = {}
    for start in range(0, len(used), _RESIZE_CHUNK):
        chunk = used[start:start + _RESIZE_CHUNK]
        u8 = _to_uint8_thwc(frames[chunk])
        for wanted, size, store in ((clip_set, CLIP_SIZE, clip_of), (sync_set, SYNC_SIZE, sync_of)):
            rows = [j for j, i in enumerate(chunk) if i in wanted]
            if rows:
                resized = resize_uint8(u8[rows], size)
                for r, j in enumerate(rows):
                    store[chunk[j]] = resized[r]
        if on_frame is not None:
            on_frame(start + len(chunk))
    return _stack(clip_of, clip_idx, CLIP_SIZE), _stack(sync_of, sync_idx, SYNC_SIZE)


def _stack(by_index: dict[int, torch.Tensor], indices: Sequence[int], size: int) -> torch.Tensor:
    if not indices:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    return torch.stack([by_index[i] for i in indices])


def _requested(duration: Optional[Number]) -> Optional[Fraction]:
    if not duration:
        return None
    requested = _exact(duration, "duration")
    if requested < 0:
        raise SelvaError(f"duration must not be negative, got {float(requested)}.")
    return requested


def _start(start: Optional[Number]) -> Fraction:
    offset = _exact(start or 0, "start")
    if offset < 0:
        raise SelvaError(f"start must not be negative, got {float(offset)} s.")
    return offset


def prepare_frames(frames: Union[torch.Tensor, np.ndarray], fps: Optional[Number] = None,
                   duration: Optional[Number] = None, *,
                   frame_times: Optional[Sequence[Number]] = None, start: Number = 0.0,
                   on_frame: Optional[Callable[[int], None]] = None) -> PreparedFrames:
    """Select, convert and resize an in-memory ``(T, H, W, 3)`` video for SelVA.

    ``frames`` are uint8 or float in [0, 1] (ComfyUI IMAGE). Give ``fps`` for a constant frame
    rate or ``frame_times`` (seconds, one per frame) for any other. ``duration`` None or 0 uses
    the whole video; a longer duration than the video is clamped (with a warning). ``start``
    skips that many seconds (times then count from it), as in :func:`decode_video`.

    ``on_frame(done)`` is called after each chunk of resized frames with the number of source
    frames converted so far (each used frame is converted once; at most ``T``); anything it
    raises stops the work and propagates (use it for progress and cancellation).
    """
    frames = _frame_stack(frames)
    n = frames.shape[0]
    rate = _exact(fps, "fps") if fps is not None else None
    if rate is not None and rate <= 0:
        raise SelvaError(f"fps must be positive, got {float(rate)}.")
    if frame_times is not None:
        if len(frame_times) != n:
            raise SelvaError(f"Got {len(frame_times)} frame times for {n} frames.")
        times = _given_times(frame_times)
    elif rate is not None:
        times = [Fraction(i) / rate for i in range(n)]
    else:
        raise SelvaError("prepare_frames needs the frame rate (fps) or the frame times.")
    interval = 1 / rate if rate is not None else _typical_interval(times)
    requested = _requested(duration)
    offset = _start(start)

    walk = _Walk(requested)
    for i, t in enumerate(times):
        walk.feed(i, t - offset)
        if walk.finished:
            break
    clip_idx, sync_idx, used = _finish(walk, requested, interval, offset)
    clip_u8, sync_u8 = _resize_selected(frames, clip_idx, sync_idx, on_frame)
    src_fps = float(fps) if fps is not None else (1 / float(interval) if interval else None)
    return PreparedFrames(clip_u8=clip_u8, sync_u8=sync_u8, duration=used, fps=src_fps,
                          clip_indices=tuple(clip_idx), sync_indices=tuple(sync_idx), n_source_frames=n,
                          source_size=(int(frames.shape[1]), int(frames.shape[2])), start=float(offset))


# ------------------------------------------------------------------------------------ decoding
_REPORT_EVERY = 10  # decoded frames between two on_frame calls


@dataclass
class _Decoded:
    """What one pass over a video stream produced."""

    clip_of: dict[int, torch.Tensor] = field(default_factory=dict)
    sync_of: dict[int, torch.Tensor] = field(default_factory=dict)
    n_decoded: int = 0  # frames that came out of the decoder
    n_packets: Optional[int] = 0  # frame packets in the whole stream; None if the count failed
    size: Optional[tuple[int, int]] = None


def _seconds(stamp: Optional[int], time_base) -> Optional[Fraction]:
    """A container timestamp in exact seconds; None when it (or its unit) is not set."""
    if stamp is None or time_base is None:
        return None
    return Fraction(stamp) * Fraction(time_base)


def _is_frame_packet(packet) -> bool:
    # The demuxer ends each stream with an empty packet that only flushes the decoder, and
    # packets marked discard (an edit list's pre-roll) decode to frames that are dropped.
    return packet.size > 0 and not packet.is_discard


def _count_rest(packets, decoded: _Decoded) -> None:
    """Count the remaining frame packets without decoding them (the mask check needs the total)."""
    import av

    try:
        for packet in packets:
            decoded.n_packets += _is_frame_packet(packet)
    except av.FFmpegError as e:  # a damaged tail must not fail a decode that has what it needs
        log.debug("Could not count the video's remaining frames: %s", e)
        decoded.n_packets = None


def _walk_stream(container, stream, walk: _Walk, offset: Fraction, rate: Optional[Fraction],
                 on_frame: Optional[Callable[[float], None]], count_frames: bool) -> _Decoded:
    """Decode until the walk is finished, resizing the frames it takes; with ``count_frames``,
    demux the rest of the stream to count its frames (otherwise reading stops there)."""
    out = _Decoded()
    # Times count from the stream's start: MPEG-TS and stream-copied cuts begin well after 0 s.
    base = _seconds(stream.start_time, stream.time_base)
    packets = container.demux(stream)
    for packet in packets:
        out.n_packets += _is_frame_packet(packet)
        for frame in packet.decode():
            index = out.n_decoded
            out.n_decoded += 1
            pts = _seconds(frame.pts, frame.time_base)
            if base is None:
                base = pts if pts is not None else Fraction(0)
            if pts is not None:
                time = pts - base
            elif rate is not None:
                time = Fraction(index) / rate
            else:
                raise SelvaError(f"Frame {index} has no timestamp and the stream has no frame rate.")
            if on_frame is not None and out.n_decoded % _REPORT_EVERY == 0:
                on_frame(float(time))
            to_clip, to_sync = walk.feed(index, time - offset)
            if walk.finished:
                break
            out.size = (frame.height, frame.width)
            if to_clip or to_sync:
                rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))[None]
                if to_clip:
                    out.clip_of[index] = resize_uint8(rgb, CLIP_SIZE)[0]
                if to_sync:
                    out.sync_of[index] = resize_uint8(rgb, SYNC_SIZE)[0]
        if walk.finished:
            if count_frames:
                _count_rest(packets, out)
            else:
                out.n_packets = None
            break
    return out


def decode_video(source: Union[str, Path, BinaryIO], duration: Optional[Number] = None,
                 start: Number = 0.0, *,
                 on_frame: Optional[Callable[[float], None]] = None,
                 count_frames: bool = False) -> PreparedFrames:
    """Decode a video (a file path, or a seekable binary file object) frame by frame, keeping
    only the frames SelVA uses.

    Each frame's presentation time, counted from the start of the video stream (files such as
    MPEG-TS begin after 0 s), decides whether it is used; used frames are converted to RGB and
    resized to 384 / 224 uint8 at once, so memory holds only the two small streams. ``start``
    skips that many seconds (times are then counted from ``start``); ``duration`` None or 0 = to
    the end of the file. Frame indices in the result count every decoded frame. Reading stops at
    ``duration``: an 8 s clip of a 2-hour file reads a few seconds of it, and ``n_source_frames``
    is then None (unknown). ``count_frames`` demuxes (without decoding) the rest of the stream
    so that ``n_source_frames`` is the video's frame count: a per-frame mask is checked against it.

    ``on_frame(seconds)`` is called every few decoded frames with the time of the latest one
    (seconds from the start of the stream); anything it raises stops decoding and propagates
    unchanged (use it for progress and cancellation).
    """
    import av

    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise SelvaError(f"Video file not found: {path}")
        source = str(path)
    else:
        path = getattr(source, "name", "the video stream")
    offset = _start(start)
    requested = _requested(duration)

    walk = _Walk(requested)
    rate = None
    cancelled: list[BaseException] = []  # what on_frame raised: passed through, never wrapped

    def report(seconds: float) -> None:
        try:
            on_frame(seconds)
        except BaseException as e:
            cancelled.append(e)
            raise

    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise SelvaError(f"{path} has no video stream.")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            guessed = stream.guessed_rate or stream.average_rate
            rate = Fraction(guessed) if guessed else None
            decoded = _walk_stream(container, stream, walk, offset, rate,
                                   report if on_frame is not None else None, count_frames)
    except SelvaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        if cancelled and e is cancelled[0]:
            raise
        raise SelvaError(f"Could not decode {path}: {e}") from e

    interval = 1 / rate if rate is not None else None
    clip_idx, sync_idx, used = _finish(walk, requested, interval, offset)
    return PreparedFrames(clip_u8=_stack(decoded.clip_of, clip_idx, CLIP_SIZE),
                          sync_u8=_stack(decoded.sync_of, sync_idx, SYNC_SIZE), duration=used,
                          fps=float(rate) if rate is not None else None,
                          clip_indices=tuple(clip_idx), sync_indices=tuple(sync_idx),
                          n_source_frames=decoded.n_packets if walk.finished else decoded.n_decoded,
                          source_size=decoded.size, start=float(offset))
