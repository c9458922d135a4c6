"""SelVA Sampler: features -> audio (rectified-flow sampling, VAE decode, vocoder)."""
from __future__ import annotations

from typing import Any, Optional

from .common import (CATEGORY, FEATURES_TYPE, MODEL_TYPE, audio_input, audio_output, comfy_run, make_hooks,
                     outputs)
from .steering import steering_inputs, steering_patches
from .textual_inversion import features_with_ti, ti_inputs


MAX_SEED = 2**63 - 1  # seed + i for batch variations must stay within torch.Generator's range
MAX_BATCH = 16
# as selva.long_video's defaults (not imported: ComfyUI reads INPUT_TYPES before any torch import)
DEFAULT_WINDOW_SECONDS = 8.0
DEFAULT_OVERLAP_SECONDS = 2.56


def edit_inputs() -> dict:
    """Optional inputs that start from audio (the Sampler's and Text to Audio's, after the others)."""
    return {
        "init_audio": ("AUDIO", {
            "tooltip": "Audio to start from: reshape it (denoise < 1), regenerate a time range of it "
                       "(regenerate_start / _end), or continue it when it is shorter than the "
                       "duration. Any rate and channel count (mixed to mono)."}),
        "denoise": ("FLOAT", {
            "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
            "tooltip": "How much of init_audio is regenerated: 1 = from pure noise (the plain output), "
                       "0.5 = keep its broad shape, 0 = the input through the VAE. Steps count only "
                       "the part that runs."}),
        "regenerate_start": ("FLOAT", {
            "default": 0.0, "min": 0.0, "max": 600.0, "step": 0.01,
            "tooltip": "Seconds: start of the range of init_audio to regenerate. Both 0 = no range."}),
        "regenerate_end": ("FLOAT", {
            "default": 0.0, "min": 0.0, "max": 600.0, "step": 0.01,
            "tooltip": "Seconds: end of the range to regenerate. Outside it the output is init_audio "
                       "exactly; the joins crossfade over up to 0.1 s inside the range."}),
    }


def edit_options(init_audio: Any, denoise: Optional[float], regenerate_start: Optional[float],
                 regenerate_end: Optional[float]) -> Any:
    from ..selva.editing import EditOptions

    wave, rate = audio_input(init_audio, "init_audio") if init_audio is not None else (None, 0)
    return EditOptions(wave, rate, 1.0 if denoise is None else float(denoise),
                       float(regenerate_start or 0.0), float(regenerate_end or 0.0))


class SelvaSampler:
    DESCRIPTION = ("Generates audio for the video from SelVA features: rectified-flow sampling "
                   "with classifier-free guidance, then VAE decoding and the vocoder.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("AUDIO", "audio",
         "The generated audio at the model's own sample rate "
         "(16 kHz or 44.1 kHz), mono, one batch entry per variation."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The pipeline from SelVA Model Loader."}),
                "features": (FEATURES_TYPE, {"tooltip": "Features from SelVA Feature Extractor."}),
                "prompt": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "Text prompt. Empty = the prompt stored in the features; a different "
                               "one re-encodes the text (the video is not decoded again)."}),
                "negative_prompt": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "Sounds to steer away from, e.g. 'music, speech'. Empty = none."}),
                "duration": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 600.0, "step": 0.1,
                    "tooltip": "Seconds of audio. 0 = the duration of the features; longer than the "
                               "features is clamped."}),
                "steps": ("INT", {
                    "default": 25, "min": 1, "max": 200,
                    "tooltip": "Euler sampling steps (official: 25). More is slower, rarely better."}),
                "cfg_strength": ("FLOAT", {
                    "default": 4.5, "min": 0.0, "max": 20.0, "step": 0.1,
                    "tooltip": "Classifier-free guidance strength (official: 4.5). Higher follows "
                               "video and prompt more closely; too high sounds harsh."}),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": "Noise seed; the same seed and inputs give the same audio."}),
                "normalize": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Loudness-normalise to target_lufs (ITU-R BS.1770), never clipping."}),
                "batch_size": ("INT", {
                    "default": 1, "min": 1, "max": MAX_BATCH,
                    "tooltip": "Variations made in one batched pass; variation i equals a single "
                               "run with seed + i."}),
            },
            "optional": {
                "target_lufs": ("FLOAT", {
                    "default": -27.0, "min": -70.0, "max": -5.0, "step": 0.5,
                    "tooltip": "Loudness target in LUFS when normalize is on. A gain cap keeps "
                               "peaks inside [-1, 1], so loud targets may fall short."}),
                **steering_inputs(),
                **ti_inputs(),
                "window_seconds": ("FLOAT", {
                    "default": DEFAULT_WINDOW_SECONDS, "min": 0.96, "max": 600.0, "step": 0.32,
                    "tooltip": "Longer audio is made in overlapping windows of this length, joined "
                               "while sampling (no crossfade of finished chunks). 8 s = the "
                               "training length. Counted in steps of 0.32 s (one sync segment)."}),
                "overlap_seconds": ("FLOAT", {
                    "default": DEFAULT_OVERLAP_SECONDS, "min": 0.32, "max": 599.0, "step": 0.32,
                    "tooltip": "How much neighbouring windows share; their predictions are blended "
                               "there. More = smoother joins but slower (each window costs the "
                               "same). Must be shorter than window_seconds."}),
                **edit_inputs(),
            },
        }

    def sample(self, model: Any, features: Any, prompt: str, negative_prompt: str,
               duration: float, steps: int, cfg_strength: float, seed: int, normalize: bool,
               batch_size: int, target_lufs: Optional[float] = -27.0, steering_vectors: Any = None,
               steering_strength: Optional[float] = 0.1,
               steering_blocks: Optional[str] = "all", textual_inversion: Any = None,
               ti_strength: Optional[float] = 1.0,
               window_seconds: Optional[float] = DEFAULT_WINDOW_SECONDS,
               overlap_seconds: Optional[float] = DEFAULT_OVERLAP_SECONDS, init_audio: Any = None,
               denoise: Optional[float] = 1.0, regenerate_start: Optional[float] = 0.0,
               regenerate_end: Optional[float] = 0.0) -> tuple[dict]:
        from ..selva.audio import loudness_normalize
        from ..selva.long_video import WindowOptions
        from ..selva.options import SamplingOptions

        with comfy_run():
            edit = edit_options(init_audio, denoise, regenerate_start, regenerate_end)
            patches = steering_patches(steering_vectors, steering_strength, steering_blocks)
            features, prompt = features_with_ti(model, features, prompt, textual_inversion, ti_strength,
                                                make_hooks())
            windows = WindowOptions(DEFAULT_WINDOW_SECONDS if window_seconds is None else float(window_seconds),
                                    DEFAULT_OVERLAP_SECONDS if overlap_seconds is None else float(overlap_seconds))
            options = SamplingOptions(prompt=prompt if prompt.strip() else None, negative_prompt=negative_prompt,
                                      duration=duration if duration > 0 else None, steps=int(steps),
                                      cfg_strength=float(cfg_strength), seed=int(seed), batch_size=int(batch_size),
                                      windows=windows)
            wave = model.generate(features, options, hooks=make_hooks(), extra_patches=tuple(patches), edit=edit)
            if normalize:
                wave = loudness_normalize(wave, model.sample_rate, -27.0 if target_lufs is None else float(target_lufs))
        return (audio_output(wave, model.sample_rate),)


class SelvaTextToAudio:
    DESCRIPTION = ("Generates audio from a text prompt alone, no video: the generator's learned "
                   "empty video sequences take the place of video features (as MMAudio's text to "
                   "audio). LoRA, steering, textual inversion and init_audio work here too.")
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("AUDIO", "audio",
         "The generated audio at the model's own sample rate, mono, one batch entry per variation."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        sampler = SelvaSampler.INPUT_TYPES()
        same = sampler["required"]
        required = {
            "model": same["model"],
            "prompt": ("STRING", {"multiline": True, "default": "",
                                  "tooltip": "What to hear, e.g. 'rain on a tin roof'."}),
            "negative_prompt": same["negative_prompt"],
            "duration": ("FLOAT", {
                "default": 8.0, "min": 0.5, "max": 600.0, "step": 0.1,
                "tooltip": "Seconds of audio. The models were trained on 8 s; longer audio is made "
                           "in overlapping windows."}),
            **{name: same[name] for name in ("steps", "cfg_strength", "seed", "batch_size")},
        }
        return {"required": required, "optional": {"normalize": same["normalize"], **sampler["optional"]}}

    def generate(self, model: Any, prompt: str, negative_prompt: str, duration: float, steps: int,
                 cfg_strength: float, seed: int, batch_size: int, normalize: Optional[bool] = True,
                 target_lufs: Optional[float] = -27.0, steering_vectors: Any = None,
                 steering_strength: Optional[float] = 0.1, steering_blocks: Optional[str] = "all",
                 textual_inversion: Any = None, ti_strength: Optional[float] = 1.0,
                 window_seconds: Optional[float] = DEFAULT_WINDOW_SECONDS,
                 overlap_seconds: Optional[float] = DEFAULT_OVERLAP_SECONDS, init_audio: Any = None,
                 denoise: Optional[float] = 1.0, regenerate_start: Optional[float] = 0.0,
                 regenerate_end: Optional[float] = 0.0) -> tuple[dict]:
        with comfy_run():
            features = model.encoding.text_features(prompt, float(duration))
        return SelvaSampler().sample(
            model, features, "", negative_prompt, float(duration), steps, cfg_strength, seed,
            True if normalize is None else normalize, batch_size, target_lufs, steering_vectors,
            steering_strength, steering_blocks, textual_inversion, ti_strength, window_seconds,
            overlap_seconds, init_audio, denoise, regenerate_start, regenerate_end)
