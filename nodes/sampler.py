"""SelVA Sampler: features -> audio (rectified-flow sampling, VAE decode, vocoder)."""
from __future__ import annotations

from typing import Any, Optional

from .common import CATEGORY, FEATURES_TYPE, MODEL_TYPE, audio_output, comfy_run, make_hooks
from .steering import steering_inputs, steering_patches
from .textual_inversion import features_with_ti, ti_inputs


MAX_SEED = 2**63 - 1  # seed + i for batch variations must stay within torch.Generator's range
MAX_BATCH = 16
# as selva.long_video's defaults (not imported: ComfyUI reads INPUT_TYPES before any torch import)
DEFAULT_WINDOW_SECONDS = 8.0
DEFAULT_OVERLAP_SECONDS = 2.56


def generate_audio(model: Any, features: Any, *, prompt: str = "", negative_prompt: str = "",
                   duration: float = 0.0, steps: int = 25, cfg_strength: float = 4.5,
                   seed: int = 0, normalize: bool = True, target_lufs: float = -27.0,
                   batch_size: int = 1, hooks: Any = None, extra_patches: Any = (),
                   window_seconds: float = DEFAULT_WINDOW_SECONDS,
                   overlap_seconds: float = DEFAULT_OVERLAP_SECONDS) -> dict:
    """ComfyUI AUDIO holding ``batch_size`` variations (variation i = seed + i)."""
    from ..selva.audio import loudness_normalize
    from ..selva.long_video import WindowOptions

    hooks = hooks if hooks is not None else make_hooks()
    wave = model.generate(
        features, prompt=prompt if prompt.strip() else None, negative_prompt=negative_prompt,
        duration=duration if duration > 0 else None, steps=int(steps),
        cfg_strength=float(cfg_strength), seed=int(seed), batch_size=int(batch_size), hooks=hooks,
        extra_patches=tuple(extra_patches),
        windows=WindowOptions(float(window_seconds), float(overlap_seconds)))
    if normalize:
        wave = loudness_normalize(wave, model.sample_rate, float(target_lufs))
    return audio_output(wave, model.sample_rate)


class SelvaSampler:
    DESCRIPTION = ("Generates audio for the video from SelVA features: rectified-flow sampling "
                   "with classifier-free guidance, then VAE decoding and the vocoder.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("AUDIO",)
    RETURN_NAMES = ("audio",)
    OUTPUT_TOOLTIPS = ("The generated audio at the model's own sample rate (16 kHz or 44.1 kHz), "
                       "mono, one batch entry per variation.",)

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
            },
        }

    def sample(self, model: Any, features: Any, prompt: str, negative_prompt: str,
               duration: float, steps: int, cfg_strength: float, seed: int, normalize: bool,
               batch_size: int, target_lufs: Optional[float] = -27.0, steering_vectors: Any = None,
               steering_strength: Optional[float] = 0.1,
               steering_blocks: Optional[str] = "all", textual_inversion: Any = None,
               ti_strength: Optional[float] = 1.0,
               window_seconds: Optional[float] = DEFAULT_WINDOW_SECONDS,
               overlap_seconds: Optional[float] = DEFAULT_OVERLAP_SECONDS) -> tuple[dict]:
        with comfy_run():
            patches = steering_patches(steering_vectors, steering_strength, steering_blocks)
            features, prompt = features_with_ti(model, features, prompt, textual_inversion, ti_strength,
                                                make_hooks())
            audio = generate_audio(
                model, features, prompt=prompt, negative_prompt=negative_prompt,
                duration=duration, steps=steps, cfg_strength=cfg_strength, seed=seed,
                normalize=normalize, target_lufs=-27.0 if target_lufs is None else target_lufs,
                batch_size=batch_size, extra_patches=patches,
                window_seconds=DEFAULT_WINDOW_SECONDS if window_seconds is None else window_seconds,
                overlap_seconds=DEFAULT_OVERLAP_SECONDS if overlap_seconds is None else overlap_seconds)
        return (audio,)
