"""SelVA Feature Extractor: video + prompt -> conditioning features, cached on disk."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from . import paths
from .common import CATEGORY, FEATURES_TYPE, MODEL_TYPE, VIDEO_TYPE, comfy_run, make_hooks, outputs
from .dataset_clip import check_clip_name, save_named_clip
from .video_input import decodable, resolve_video


def cache_directory(cache_dir: str) -> Path:
    """The folder for cached features: ``cache_dir`` by the nodes' path rule (relative = inside
    ComfyUI's output folder), or when empty the core's default, ``<system temp>/selva_features``,
    which ``python -m selva cache`` reads (a cache only: named dataset clips never go there, see
    :func:`.paths.dataset_folder`). Not ComfyUI's temp folder: ComfyUI empties it at start-up,
    which would throw the cache away every session."""
    from ..selva.features import default_cache_dir

    text = (cache_dir or "").strip()
    return paths.resolve(text, "cache_dir") if text else default_cache_dir()


def as_mask_stack(mask: Any) -> Any:
    """ComfyUI MASK (H, W) or (N, H, W) -> (N, H, W) float; the core checks sizes and counts."""
    if mask is None:
        return None
    import torch

    from ..selva.errors import SelvaError

    if not isinstance(mask, torch.Tensor):
        raise SelvaError(f"mask must be a ComfyUI MASK tensor, got {type(mask).__name__}.")
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() == 4 and mask.shape[-1] == 1:  # some nodes emit (N, H, W, 1)
        mask = mask[..., 0]
    if mask.dim() != 3 or mask.shape[0] == 0:
        raise SelvaError(f"mask must be shaped (height, width) or (frames, height, width); got "
                         f"{tuple(mask.shape)}.")
    return mask.float()


NAMED_CACHE_SUBDIR = ".selva_cache/features"


class SelvaFeatureExtractor:
    DESCRIPTION = ("Encodes a video and a text prompt into SelVA conditioning features (T5, "
                   "CLIP text, text-conditioned sync features). Results are cached on disk, so a "
                   "re-run with the same inputs skips the encoders.")
    CATEGORY = CATEGORY
    FUNCTION = "extract"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        (FEATURES_TYPE, "features", "Conditioning features for the SelVA Sampler."),
        ("FLOAT", "fps", "The real frame rate of the video (for muxing the audio back, e.g. Create Video)."),
        ("STRING", "prompt", "The prompt the features were made with."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The pipeline from SelVA Model Loader."}),
                "video": (VIDEO_TYPE, {
                    "tooltip": "The video: an IMAGE batch (e.g. VHS Load Video) or a VIDEO from "
                               "core Load Video (decoded in a stream, memory-friendly)."}),
                "prompt": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "What to hear: the sound source to generate, e.g. 'dog barking'. "
                               "SelVA uses it to pick the matching events in the video."}),
                "fps": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 1000.0, "step": 0.001,
                    "tooltip": "Frame rate of an IMAGE batch (0 = from video_info). Frames are "
                               "resampled from it to 8 and 25 fps. A VIDEO from Load Video uses "
                               "its own timestamps."}),
                "duration": ("FLOAT", {
                    "default": 8.0, "min": 0.0, "max": 600.0, "step": 0.1,
                    "tooltip": "Seconds of audio to prepare for, from `start` (0 s unless set). 0 = "
                               "the whole video. Longer than the video is clamped (with a warning). "
                               "The models were trained on 8 s."}),
                "cache_dir": ("STRING", {
                    "default": "",
                    "tooltip": "Folder for cached features (.npz); relative = inside ComfyUI's "
                               "output folder. Empty = the system temp folder, or with name: "
                               "selva_datasets/<name> in the output folder."}),
                "mask_strength": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "How strongly the mask hides the background: 0 = no effect, 1 = "
                               "background fully replaced with neutral grey."}),
                "mask_clip": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Apply the mask to the frames seen by CLIP (8 fps path)."}),
                "mask_sync": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Apply the mask to the frames seen by the sync encoder (25 fps path)."}),
            },
            "optional": {
                "video_info": ("VHS_VIDEOINFO", {
                    "tooltip": "VHS video info: its loaded_fps sets the frame rate of the frames."}),
                "mask": ("MASK", {
                    "tooltip": "Where the sound source is (1 = keep, 0 = background). One frame = "
                               "a static mask; or one mask per video frame, same size as the video."}),
                "name": ("STRING", {
                    "default": "",
                    "tooltip": "Dataset clip name. When set, the features are also saved as "
                               "name_001.npz, name_002.npz, ... (next free number, never "
                               "overwritten) in cache_dir (empty: selva_datasets/<name> in the "
                               "output folder): point cache_dir at your dataset folder."}),
                "audio": ("AUDIO", {
                    "tooltip": "With name: the clip's clean target audio, saved beside the features "
                               "as name_NNN.wav (what a LoRA learns to make). The video's whole "
                               "soundtrack is cut to start..start+duration; audio already that "
                               "long is kept as it is."}),
                "start": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 86400.0, "step": 0.01,
                    "tooltip": "Seconds into the video where the audio begins; duration counts from "
                               "here. SelVA Mux Video keeps the result aligned with it."}),
            },
        }

    def extract(self, model: Any, video: Any, prompt: str, fps: float, duration: float,
                cache_dir: str, mask_strength: float, mask_clip: bool, mask_sync: bool,
                video_info: Optional[dict] = None, mask: Any = None, name: str = "",
                audio: Any = None, start: float = 0.0) -> tuple[Any, float, str]:
        """Features for ``video`` and ``prompt``, from the cache when every input is unchanged.

        With ``name``, the features are also written as ``<name>_NNN.npz`` (next free number)
        into the cache folder, with ``audio`` (if given) as ``<name>_NNN.wav`` beside it: a
        training clip, its audio cut to the features' span (see
        :func:`selva.datasets.align.clip_span`). An empty ``cache_dir`` then means
        ``selva_datasets/<name>/`` in the output folder. The content-keyed cache lives in a
        hidden sub-folder, so the dataset folder holds only named clips. Returns the features,
        the real frame rate of the video and the prompt.
        """
        from ..selva.features import FeatureCache
        from ..selva.options import MaskOptions

        with comfy_run():
            name = (name or "").strip()
            if name:
                check_clip_name(name)
            src = resolve_video(video, video_info, fps)
            masking = MaskOptions(as_mask_stack(mask), float(mask_strength), bool(mask_clip), bool(mask_sync))
            source, source_fps = (src.frames, src.fps) if src.frames is not None else (decodable(src.stream), None)
            folder = paths.dataset_folder(cache_dir, name) if name else cache_directory(cache_dir)
            cache = FeatureCache(folder / NAMED_CACHE_SUBDIR if name else folder)
            feats = model.extract_features(source, source_fps, prompt, duration=duration if duration > 0 else None,
                                           start=float(start or 0.0), mask=masking, cache=cache, hooks=make_hooks())
            if name:
                save_named_clip(folder, name, feats, audio, start=float(start or 0.0))
        return feats, float(feats.fps), prompt
