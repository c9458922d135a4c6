"""SelVA Mux Video: the generated audio into the source video file, aligned with the features' start.

The picture is copied, not re-encoded, so a long or high-resolution video never sits in memory as
frames (Create Video would decode all of it); a source a copy cannot make playable is re-encoded
(see ``selva.media.mux_video``). The result is a new numbered file in ComfyUI's temp folder, which
ComfyUI empties at start-up; Save Video stores it where the user wants.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import comfy_compat
from .common import CATEGORY, FEATURES_TYPE, audio_input, comfy_run, outputs

MUX_STEM = "selva_mux"


def _source_path(video: Any) -> Path:
    from ..selva.errors import SelvaError

    source = video.get_stream_source() if hasattr(video, "get_stream_source") else None
    if not isinstance(source, (str, os.PathLike)) or not Path(source).is_file():
        raise SelvaError("SelVA Mux Video needs a video loaded from a file (core Load Video); for "
                         "frames made in the graph use Create Video instead.")
    return Path(source)


class SelvaMuxVideo:
    DESCRIPTION = ("Puts the generated audio into the video it was made for, starting at the "
                   "Feature Extractor's start. The picture is copied, not re-encoded, so long "
                   "videos need no memory for frames (a source that cannot be copied playably is "
                   "re-encoded as H.264). The file goes to ComfyUI's temp folder, which ComfyUI "
                   "empties at start-up: connect Save Video to keep it.")
    CATEGORY = CATEGORY
    FUNCTION = "mux"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("VIDEO", "video", "The video with the new audio; connect Save Video."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "video": ("VIDEO", {"tooltip": "The video from core Load Video (the same one the "
                                               "features were extracted from)."}),
                "audio": ("AUDIO", {"tooltip": "Audio from SelVA Sampler."}),
                "features": (FEATURES_TYPE, {"tooltip": "The features the audio was made from: "
                                                        "their start places the audio."}),
            },
            "optional": {
                "variation": ("INT", {"default": 0, "min": 0, "max": 63,
                                      "tooltip": "Which variation of a batch to use."}),
            },
        }

    def mux(self, video: Any, audio: Any, features: Any, variation: int = 0) -> tuple[Any]:
        """``video``'s picture from the features' start with ``audio`` (one variation)."""
        from ..selva.artifacts import next_numbered_path
        from ..selva.errors import SelvaError
        from ..selva.media import copy_suffix, mux_video

        with comfy_run():
            src = _source_path(video)
            wave, rate = audio_input(audio)
            variation = int(variation)
            if not 0 <= variation < wave.shape[0]:
                raise SelvaError(f"variation {variation} does not exist: the audio holds {wave.shape[0]} "
                                 f"(0 to {wave.shape[0] - 1}).")
            out = next_numbered_path(comfy_compat.comfy_temp_dir(), MUX_STEM, copy_suffix(src), digits=5)
            mux_video(src, wave[variation], rate, out, start=float(getattr(features, "start", 0.0)))
            return (comfy_compat.video_from_file(out),)
