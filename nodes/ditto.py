"""SelVA DITTO Optimizer: optimise the initial noise toward a reference set's timbre, then sample."""
from __future__ import annotations

import logging
from typing import Any, Optional

from . import paths
from .common import (CATEGORY, FEATURES_TYPE, MODEL_TYPE, audio_input, audio_output, comfy_run, make_hooks,
                     outputs)
from .sampler import MAX_SEED
from .steering import steering_inputs, steering_patches
from .textual_inversion import features_with_ti, ti_inputs

log = logging.getLogger(__name__)


def reference_set(model: Any, reference_dir: str, reference_audio: Any, hooks: Any):
    """The cached mel statistics of the reference folder and/or the connected AUDIO (with neither,
    the core says "No reference audio")."""
    from ..selva.errors import SelvaError
    from ..selva.style.reference import REFERENCE_CACHE, ReferenceAudio, find_audio_files

    files = []
    folder = paths.resolve_existing(reference_dir, "reference_dir") if reference_dir and reference_dir.strip() else None
    if folder is not None and reference_audio is not None and not folder.exists():
        log.warning("reference_dir %s does not exist; using only the connected reference_audio.", folder)
        folder = None
    if folder is not None:
        files = find_audio_files(folder)
        if not files and reference_audio is None:
            raise SelvaError(f"The reference folder {folder} holds no .wav/.flac/.mp3/.ogg files. Put "
                             f"a few clips of the sound you want there, or connect reference_audio.")
    extra = []
    if reference_audio is not None:
        wave, rate = audio_input(reference_audio, "reference_audio")
        extra = [ReferenceAudio(f"reference_audio[{i}]", w, rate) for i, w in enumerate(wave)]
    return REFERENCE_CACHE.get_or_compute(model, files, extra, hooks)


class SelvaDittoOptimizer:
    DESCRIPTION = ("DITTO: optimises only the starting noise (all weights frozen) so the generated "
                   "audio's mel spectrum and band correlations match a set of reference clips, "
                   "then samples like the Sampler. n_opt_steps = 0 gives the Sampler's output.")
    CATEGORY = CATEGORY
    FUNCTION = "optimize"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("AUDIO", "audio", "The audio sampled from the optimised noise, at the model's rate."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The SelVA model (LoRA-loaded ones work too)."}),
                "features": (FEATURES_TYPE, {"tooltip": "Features from SelVA Feature Extractor."}),
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "Text prompt. Empty = the prompt stored in the features."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                               "tooltip": "Sounds to steer away from. Empty = none."}),
                "reference_dir": ("STRING", {
                    "default": "selva/reference",
                    "tooltip": "Folder of reference clips (.wav/.flac/.mp3/.ogg, searched "
                               "recursively) with the timbre you want. Relative = inside ComfyUI's "
                               "output folder. May be empty when reference_audio is connected."}),
                "n_opt_steps": ("INT", {
                    "default": 50, "min": 0, "max": 1000,
                    "tooltip": "Adam steps on the noise. 0 = plain Sampler output. Each step costs "
                               "about n_ode_steps generator passes plus the backward pass."}),
                "opt_lr": ("FLOAT", {"default": 0.1, "min": 0.0001, "max": 10.0, "step": 0.001,
                                     "tooltip": "Adam learning rate on the noise."}),
                "n_ode_steps": ("INT", {
                    "default": 10, "min": 1, "max": 100,
                    "tooltip": "Euler steps of the short sampling run used while optimising."}),
                "n_grad_steps": ("INT", {
                    "default": 5, "min": 1, "max": 100,
                    "tooltip": "How many of the last n_ode_steps are differentiated (at most "
                               "n_ode_steps; more = more accurate gradient, slower)."}),
                "style_weight": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.1,
                    "tooltip": "Weight of the band-correlation (Gram) term next to the mean "
                               "spectrum: higher matches texture, lower mostly matches EQ."}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 200,
                                  "tooltip": "Euler steps of the final pass (as the Sampler)."}),
                "cfg_strength": ("FLOAT", {"default": 4.5, "min": 0.0, "max": 20.0, "step": 0.1,
                                           "tooltip": "Classifier-free guidance (as the Sampler)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "The noise the optimisation starts from (the Sampler's "
                                            "noise for this seed)."}),
            },
            "optional": {
                "normalize": ("BOOLEAN", {"default": True,
                                          "tooltip": "Loudness-normalise to target_lufs."}),
                "target_lufs": ("FLOAT", {"default": -27.0, "min": -70.0, "max": -5.0, "step": 0.5,
                                          "tooltip": "Loudness target when normalize is on."}),
                "reference_audio": ("AUDIO", {
                    "tooltip": "Reference clips as AUDIO (each batch entry one clip), instead of "
                               "or beside reference_dir."}),
                **steering_inputs(),
                **ti_inputs(),
                "anchor_weight": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1,
                    "tooltip": "Pull of the noise toward where it started (mean squared distance, added "
                               "to the objective): higher keeps the audio cleaner and closer to the "
                               "Sampler's, lower lets the style move it further. 0 = off."}),
            },
        }

    def optimize(self, model: Any, features: Any, prompt: str, negative_prompt: str, reference_dir: str,
                 n_opt_steps: int, opt_lr: float, n_ode_steps: int, n_grad_steps: int,
                 style_weight: float, steps: int, cfg_strength: float, seed: int,
                 normalize: bool = True, target_lufs: float = -27.0, reference_audio: Any = None,
                 steering_vectors: Any = None, steering_strength: Optional[float] = 0.1,
                 steering_blocks: Optional[str] = "all", textual_inversion: Any = None,
                 ti_strength: Optional[float] = 1.0, anchor_weight: float = 0.0) -> tuple[dict]:
        from ..selva.audio import loudness_normalize
        from ..selva.style.ditto import DittoConfig, ditto_generate

        with comfy_run():
            config = DittoConfig(n_opt_steps=int(n_opt_steps), opt_lr=float(opt_lr),
                                 n_ode_steps=int(n_ode_steps), n_grad_steps=int(n_grad_steps),
                                 style_weight=float(style_weight), steps=int(steps),
                                 cfg_strength=float(cfg_strength), seed=int(seed),
                                 anchor_weight=float(anchor_weight))
            config.validate()  # before reading any audio
            hooks = make_hooks(preview=True)  # the progress preview shows the loss curve
            patches = steering_patches(steering_vectors, steering_strength, steering_blocks)
            features, prompt = features_with_ti(model, features, prompt, textual_inversion, ti_strength, hooks)
            target = reference_set(model, reference_dir, reference_audio, hooks)
            result = ditto_generate(model, features, target, config,
                                    prompt=prompt if prompt.strip() else None,
                                    negative_prompt=negative_prompt, extra_patches=patches, hooks=hooks)
            wave = result.waveform
            if normalize:
                wave = loudness_normalize(wave, model.sample_rate, float(target_lufs))
        return (audio_output(wave, model.sample_rate),)
