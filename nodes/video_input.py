"""Turn what arrives on the ``video`` socket into something the core can read, and find its fps.

Two kinds of input:

* IMAGE: a (T, H, W, 3) float batch already in memory (VHS Load Video, Get Video Components).
* VIDEO: ComfyUI's native video object (core Load Video). A file-backed one is handed to the core
  as a path/stream so it is decoded once, straight to the two small target sizes; a long 1080p
  clip never sits in memory as full-resolution float frames. One built from tensors (Create
  Video) is already in memory, so its frames are used directly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..selva.errors import SelvaError

log = logging.getLogger(__name__)


@dataclass
class VideoSource:
    """Either ``frames`` (T, H, W, 3) or ``stream`` (a path or a binary file object)."""

    frames: Any = None
    stream: Union[str, Any, None] = None
    fps: Optional[float] = None  # None: the core reads the rate from the stream
    description: str = ""


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


def _is_image_batch(video: Any) -> bool:
    import torch

    return isinstance(video, torch.Tensor)


def _image_source(frames: Any) -> VideoSource:
    if frames.dim() == 3:  # a single image
        frames = frames[None]
    if frames.dim() != 4 or frames.shape[-1] not in (1, 3, 4):
        raise SelvaError(f"video must be an IMAGE batch shaped (frames, height, width, 3); got "
                         f"{tuple(frames.shape)}.")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise SelvaError("The video is empty (no frames): check the loader's frame range.")
    return VideoSource(frames=frames, description=f"IMAGE batch of {frames.shape[0]} frames")


def _video_object_source(video: Any) -> VideoSource:
    name = type(video).__name__
    if name != "VideoFromComponents" and hasattr(video, "get_stream_source"):
        stream = video.get_stream_source()
        return VideoSource(stream=stream, description=f"video {stream if isinstance(stream, str) else name}")
    if hasattr(video, "get_components"):
        comp = video.get_components()
        images = comp.images
        rate = float(comp.frame_rate) if comp.frame_rate else None
        src = _image_source(images)
        src.fps = rate
        src.description = f"{name} of {images.shape[0]} frames"
        return src
    raise SelvaError(f"video must be an IMAGE batch or a ComfyUI VIDEO; got {name}.")


def resolve_video(video: Any, video_info: Any = None, fps: float = 0.0) -> VideoSource:
    """Decide what to decode and at which rate.

    The rate comes from, in order: VHS ``video_info`` (what the frames really are after any
    frame skipping), the ``fps`` input when above 0, the VIDEO's own rate. An IMAGE batch with
    none of these is refused: guessing would silently misalign sound and picture.
    """
    if video is None:
        raise SelvaError("No video connected to the SelVA Feature Extractor.")
    src = _image_source(video) if _is_image_batch(video) else _video_object_source(video)
    info_rate = fps_from_video_info(video_info)
    if info_rate is not None:
        src.fps = info_rate
    elif fps and fps > 0:
        src.fps = float(fps)
    if src.fps is None and src.frames is not None:
        raise SelvaError("The frame rate of the IMAGE batch is unknown: connect video_info (VHS) "
                         "or set fps to the video's frame rate.")
    return src
