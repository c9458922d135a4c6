"""SelVA BigVGAN Trainer / Loader: tune the vocoder toward a timbre, then use the tuned one."""
from __future__ import annotations

import logging
from typing import Any

from .common import CATEGORY, MODEL_TYPE, comfy_run
from .paths import resolve, resolve_existing
from .training import make_training_hooks

log = logging.getLogger(__name__)

TRAIN_MODES = ("snake_alpha_only", "all_params")
MAX_SEED = 2**63 - 1
_LOG_EVERY = 25  # steps between loss lines in ComfyUI's console


def _optional_path(text: str, what: str):
    text = (text or "").strip()
    return resolve(text, what) if text else None


def _resume_path(text: str):
    text = (text or "").strip()
    if text == "latest":
        return text
    return _optional_path(text, "resume")


def _log_step(info: Any) -> None:
    if info.step == 1 or info.step % _LOG_EVERY == 0 or info.step == info.steps:
        log.info("BigVGAN tuning step %d/%d: loss %.4f (%.2f steps/s)", info.step, info.steps, info.loss,
                 info.steps_per_s)


class SelvaBigvganTrainer:
    DESCRIPTION = ("Fine-tunes the model's BigVGAN vocoder on your recordings so decoded audio takes "
                   "on their timbre. By default only the Snake activations' alpha/beta train (small, "
                   "safe); the result loads with SelVA BigVGAN Loader.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    OUTPUT_NODE = True  # runs on its own, without a loader connected
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("checkpoint_path",)
    OUTPUT_TOOLTIPS = ("The tuned vocoder (vocoder_final.safetensors in a new run folder); connect it "
                       "to SelVA BigVGAN Loader's path.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The pipeline from SelVA Model Loader; its vocoder is "
                                                  "copied, never changed."}),
                "data_dir": ("STRING", {
                    "default": "selva/vocoder_data",
                    "tooltip": "Folder of audio files (wav, flac, mp3, ogg, ...; sub-folders too) with "
                               "the sound to learn. Relative paths are inside ComfyUI's output folder."}),
                "output_path": ("STRING", {
                    "default": "selva/vocoder_tuning",
                    "tooltip": "Folder for the run: each run gets a new bigvgan_NNN folder with tuned "
                               "files, checkpoints, loss curves and eval samples. Relative = inside "
                               "ComfyUI's output folder."}),
                "train_mode": (list(TRAIN_MODES), {
                    "default": "snake_alpha_only",
                    "tooltip": "snake_alpha_only: only the periodic activations' alpha/beta train "
                               "(54,480 numbers in both released vocoders, hard to break). all_params: "
                               "every weight (stronger, needs more data, can add artefacts)."}),
                "steps": ("INT", {"default": 2000, "min": 1, "max": 1_000_000,
                                  "tooltip": "Optimizer steps in total (a resumed run continues to this). "
                                             "Watch the loss curve and eval samples: stop when they flatten."}),
                "lr": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1e-1, "step": 1e-5, "round": False,
                                 "tooltip": "Learning rate (AdamW, BigVGAN's betas 0.8/0.99). 1e-4 is "
                                            "BigVGAN's own; up to 1e-3 speeds snake_alpha_only up; lower "
                                            "it for all_params if artefacts appear."}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 64,
                                       "tooltip": "Segments per step."}),
                "segment_seconds": ("FLOAT", {
                    "default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1,
                    "tooltip": "Length of each random training excerpt (rounded to whole mel frames)."}),
                "lambda_l2sp": ("FLOAT", {
                    "default": 1e-3, "min": 0.0, "max": 100.0, "step": 1e-4, "round": False,
                    "tooltip": "Pull toward the pretrained weights (squared distance); higher keeps "
                               "the original sound more, 0 lets it drift freely."}),
                "save_every": ("INT", {"default": 500, "min": 0, "max": 1_000_000,
                                       "tooltip": "Steps between checkpoints, tuned files and eval "
                                                  "samples (0 = only at the end)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "Seed of the segment choice; same seed, same run."}),
            },
            "optional": {
                "discriminator_path": ("STRING", {
                    "default": "",
                    "tooltip": "Optional bigvgan_discriminator_optimizer.pt (nvidia/bigvgan_v2_44khz_"
                               "128band_512x): its frozen discriminators add a feature-matching loss, "
                               "which then leads. The 16 kHz vocoder was released without one. "
                               "Relative = inside ComfyUI's output folder."}),
                "resume": ("STRING", {
                    "default": "",
                    "tooltip": "Continue a run: 'latest', a run folder, its checkpoints/step_NNNNNN.pt "
                               "or a vocoder_step_NNNNNN.safetensors it wrote. Empty = new run."}),
            },
        }

    def train(self, model: Any, data_dir: str, output_path: str, train_mode: str, steps: int, lr: float,
              batch_size: int, segment_seconds: float, lambda_l2sp: float, save_every: int, seed: int,
              discriminator_path: str = "", resume: str = "") -> tuple[str]:
        from ..selva.vocoder_tuning.tuner import VocoderTuningConfig, tune_vocoder

        with comfy_run():
            cfg = VocoderTuningConfig(
                data_dir=resolve_existing(data_dir, "data_dir"), output_path=resolve(output_path, "output_path"),
                train_mode=train_mode, steps=int(steps), lr=float(lr), batch_size=int(batch_size),
                segment_seconds=float(segment_seconds), lambda_l2sp=float(lambda_l2sp),
                save_every=int(save_every), seed=int(seed),
                discriminator_path=_optional_path(discriminator_path, "discriminator_path"),
                resume=_resume_path(resume))
            # the progress bar's preview shows the live loss curve
            path, _ = tune_vocoder(model, cfg, make_training_hooks(), on_step=_log_step)
        return (str(path),)


class SelvaBigvganLoader:
    DESCRIPTION = ("Gives the model a tuned vocoder from SelVA BigVGAN Trainer. The input model keeps "
                   "its own vocoder, so other branches of the graph keep the original sound.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The same SelVA model with the tuned vocoder; connect it to the Sampler.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The pipeline from SelVA Model Loader."}),
                "path": ("STRING", {
                    "default": "",
                    "tooltip": "A tuned vocoder .safetensors (the Trainer's checkpoint_path). Relative "
                               "paths are inside ComfyUI's output folder."}),
            },
        }

    def load(self, model: Any, path: str) -> tuple[Any]:
        from ..selva.vocoder_tuning.stage import with_tuned_vocoder

        with comfy_run():
            return (with_tuned_vocoder(model, resolve(path, "path")),)
