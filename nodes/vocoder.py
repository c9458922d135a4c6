"""SelVA BigVGAN Trainer / Loader: tune the vocoder toward a timbre, then use the tuned one."""
from __future__ import annotations

import logging
from typing import Any

from .common import CATEGORY, MODEL_TYPE, comfy_run, make_hooks, outputs
from .options import option_inputs
from .paths import resolve, resolve_existing, resume_arg

log = logging.getLogger(__name__)

_LOG_EVERY = 25  # steps between loss lines in ComfyUI's console


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
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("STRING", "checkpoint_path",
         "The tuned vocoder (vocoder_final.safetensors in a new "
         "run folder); connect it to SelVA BigVGAN Loader's path."))

    # Settings shown, in the order saved workflows store them (new ones go at the end of OPTIONAL).
    REQUIRED = ("train_mode", "steps", "lr", "batch_size", "segment_seconds", "lambda_l2sp", "save_every",
                "seed")
    OPTIONAL = ("lambda_phase", "use_gafilter", "gafilter_kernel_size", "lora_adapter")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        from ..selva.vocoder_tuning.tuner import VocoderTuningConfig

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
                **option_inputs(VocoderTuningConfig, cls.REQUIRED),
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
                **option_inputs(VocoderTuningConfig, cls.OPTIONAL),
            },
        }

    def train(self, model: Any, data_dir: str, output_path: str, discriminator_path: str = "",
              resume: str = "", **settings: Any) -> tuple[str]:
        from ..selva.train.options import from_inputs
        from ..selva.vocoder_tuning.tuner import VocoderTuningConfig, tune_vocoder

        adapter = str(settings.pop("lora_adapter", "") or "").strip()
        with comfy_run():
            cfg = from_inputs(VocoderTuningConfig, settings,
                              lora_adapter=str(resolve_existing(adapter, "lora_adapter")) if adapter else "",
                              data_dir=resolve_existing(data_dir, "data_dir"), output_path=resolve(output_path, "output_path"),
                              discriminator_path=(resolve_existing(discriminator_path, "discriminator_path")
                                                  if discriminator_path.strip() else None),
                              resume=resume_arg(resume))
            # the progress bar's preview shows the live loss curve
            path, _ = tune_vocoder(model, cfg, make_hooks(preview=True), on_step=_log_step)
        return (str(path),)


class SelvaBigvganLoader:
    DESCRIPTION = ("Gives the model a tuned vocoder from SelVA BigVGAN Trainer. The input model keeps "
                   "its own vocoder, so other branches of the graph keep the original sound.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        (MODEL_TYPE, "model", "The same SelVA model with the tuned vocoder; connect it to the Sampler."))

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
            return (with_tuned_vocoder(model, resolve_existing(path, "path")),)


class SelvaBigvganScheduler:
    DESCRIPTION = ("Runs a sweep of BigVGAN vocoder tunings from an experiments JSON file (base settings + "
                   "per-experiment overrides; the earlier SelVA pack's layout with id / data_dir / "
                   "output_root is read too), decoding each audio folder once. Re-running skips finished "
                   "experiments; a failing one is recorded and the sweep goes on.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("STRING", "summary_path",
         "experiment_summary.json: per experiment its settings, "
         "status, losses, time, tuned vocoder path and error."),
        ("IMAGE", "comparison_curves", "Every experiment's smoothed loss curve, labelled."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The pipeline from SelVA Model Loader; its vocoder is "
                                                  "copied for each run, never changed."}),
                "experiments_file": ("STRING", {
                    "default": "bigvgan_experiments.json",
                    "tooltip": 'JSON: {"base": {"data_dir": ..., "steps": 2000}, "experiments": [{"name": '
                               '"phase", "lambda_phase": 1.0}]} (keys: the BigVGAN Trainer\'s inputs). '
                               "Relative = inside ComfyUI's output folder."}),
            },
            "optional": {
                "output_dir": ("STRING", {
                    "default": "selva/vocoder_sweeps",
                    "tooltip": "The sweep folder is <output_dir>/<experiments file name> (a file's own "
                               "output_root wins). Relative = inside ComfyUI's output folder."}),
            },
        }

    def run(self, model: Any, experiments_file: str, output_dir: str = "selva/vocoder_sweeps") -> tuple[str, Any]:
        from ..selva.train.plots import image_tensor
        from ..selva.vocoder_tuning.sweep import run_vocoder_sweep

        with comfy_run():
            result = run_vocoder_sweep(model, resolve_existing(experiments_file, "experiments_file"),
                                       resolve(output_dir, "output_dir"), hooks=make_hooks(preview=True),
                                       resolve=lambda p: resolve(p, "path in the experiments file"),
                                       on_step=_log_step)
        return (str(result.summary_path), image_tensor(result.comparison))
