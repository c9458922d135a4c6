"""Turn what arrives on the ``video`` socket into something the core can read, and find its fps.

Two kinds of input:

* IMAGE: a (T, H, W, 3) float batch already in memory (VHS Load Video, Get Video Components).
* VIDEO: ComfyUI's native video object (core Load Video). A file-backed one is handed to the core
  as a path/stream so it is decoded once, straight to the two small target sizes; a long 1080p
  clip never sits in memory as full-resolution float frames. One built from tensors (Create
  Video) is already in memory, so its frames are used directly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

from ..selva.errors import SelvaError


@dataclass
class VideoSource:
    """Either ``frames`` (T, H, W, 3) or ``stream`` (a path or a binary file object)."""

    frames: Any = None
    stream: Union[str, Any, None] = None
    fps: Optional[float] = None  # None: the core reads the rate from the stream


def fps_from_video_info(video_info: Any) -> Optional[float]:
    """The real rate of the loaded frames from VHS's VIDEOINFO (``loaded_fps``, else ``source_fps``)."""
    if not isinstance(video_info, dict):
        return None
    for key in ("loaded_fps", "source_fps"):
        value = video_info.get(key)
        if value:
            try:
                rate = float(value)
            except (TypeError, ValueError):
                continue
            if rate > 0:
                return rate
    return None


def _image_source(frames: Any) -> VideoSource:
    if frames.dim() == 3:  # a single image
        frames = frames[None]
    if frames.dim() != 4 or frames.shape[-1] not in (1, 3, 4):
        raise SelvaError(f"video must be an IMAGE batch shaped (frames, height, width, 3); got "
                         f"{tuple(frames.shape)}.")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise SelvaError("The video is empty (no frames): check the loader's frame range.")
    if frames.shape[-1] == 4:  # RGBA: the picture is in the colour channels
        frames = frames[..., :3]
    elif frames.shape[-1] == 1:  # greyscale
        frames = frames.expand(-1, -1, -1, 3)
    return VideoSource(frames=frames)


def _video_object_source(video: Any) -> VideoSource:
    name = type(video).__name__
    if name != "VideoFromComponents" and hasattr(video, "get_stream_source"):
        return VideoSource(stream=video.get_stream_source())
    if hasattr(video, "get_components"):
        comp = video.get_components()
        src = _image_source(comp.images)
        src.fps = float(comp.frame_rate) if comp.frame_rate else None
        return src
    raise SelvaError(f"video must be an IMAGE batch or a ComfyUI VIDEO; got {name}.")


def resolve_video(video: Any, video_info: Any = None, fps: float = 0.0) -> VideoSource:
    """Decide what to decode and at which rate.

    For an IMAGE batch the rate comes from VHS ``video_info`` (what the frames really are
    after any frame skipping), else the ``fps`` input; with neither it is refused, since
    guessing would silently misalign sound and picture. A file-backed VIDEO is decoded by its
    own timestamps (exact even for variable frame rates), so both are ignored for it.
    """
    import torch

    if video is None:
        raise SelvaError("No video connected to the SelVA Feature Extractor.")
    src = _image_source(video) if isinstance(video, torch.Tensor) else _video_object_source(video)
    if src.frames is None:
        return src
    info_rate = fps_from_video_info(video_info)
    if info_rate is not None:
        src.fps = info_rate
    elif fps and fps > 0:
        src.fps = float(fps)
    if src.fps is None:
        raise SelvaError("The frame rate of the IMAGE batch is unknown: connect video_info (VHS) "
                         "or set fps to the video's frame rate.")
    return src


def decodable(stream: Any) -> Union[Path, BinaryIO]:
    """What the core's streaming decoder reads: a path, or the in-memory stream itself (rewound)."""
    if isinstance(stream, (str, os.PathLike)):
        return Path(stream)
    if not hasattr(stream, "read"):
        raise SelvaError(f"Cannot read a video from a {type(stream).__name__}.")
    if hasattr(stream, "seek"):
        stream.seek(0)
    return stream
