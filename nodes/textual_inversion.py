"""Textual inversion nodes: train learned prompt tokens on a dataset, load them for sampling."""
from __future__ import annotations

from typing import Any, Optional

from . import paths
from .common import CATEGORY, MODEL_TYPE, TEXTUAL_INVERSION_TYPE, comfy_run, make_hooks, outputs
from .options import option_inputs


def ti_inputs() -> dict:
    """The optional inputs the Sampler and DITTO share (appended at the end of "optional")."""
    return {
        "textual_inversion": (TEXTUAL_INVERSION_TYPE, {
            "tooltip": "Learned tokens from SelVA Textual Inversion Loader. Not connected = none."}),
        "ti_strength": ("FLOAT", {
            "default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
            "tooltip": "Blend of the learned tokens into the prompt: 0 = off (bit-identical "
                       "output), 1 = as trained. A clip_t5 embedding also appends its T5 tokens "
                       "(from the prompt's end token toward the learned ones) and re-encodes the "
                       "sync features from the features' frames."}),
    }


def features_with_ti(model: Any, features: Any, prompt: str, textual_inversion: Any,
                     ti_strength: Optional[float], hooks: Any) -> tuple[Any, str]:
    """(features, prompt) for the Sampler: unchanged without TI; else re-encoded for ``prompt``
    first (so the tokens are not lost to a later re-encode) and carrying the tokens (a clip_t5
    embedding re-encodes the sync features through ``model``, see the core)."""
    from ..selva.style.textual_inversion import apply_to_features

    if textual_inversion is None or not ti_strength:
        return features, prompt
    features = model.encoding.features_for_prompt(features, prompt if prompt.strip() else None, hooks)
    return apply_to_features(features, textual_inversion, float(ti_strength), pipe=model, hooks=hooks), ""


class SelvaTextualInversionTrainer:
    DESCRIPTION = ("Learns a few prompt tokens (textual inversion) that make SelVA sound like a "
                   "dataset, with every weight frozen. Same dataset layout as LoRA training: "
                   "feature .npz files with a same-name audio file each.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("STRING", "embeddings_path",
         "The trained tokens (.safetensors); feed to SelVA Textual Inversion Loader."),
        ("IMAGE", "loss_curve", "The loss per step (raw and smoothed)."))

    # Settings shown, in the order saved workflows store them (new ones go at the end of OPTIONAL).
    REQUIRED = ("n_tokens", "init_text", "steps", "lr", "batch_size", "save_every", "seed")
    OPTIONAL = ("path", "inject_mode", "token_norm_clamp")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        from ..selva.style.textual_inversion import TiTrainOptions

        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The SelVA model (a LoRA-loaded one works too)."}),
                "data_dir": ("STRING", {
                    "default": "selva/datasets/my_sounds",
                    "tooltip": "Dataset folder: clip.npz + clip.wav pairs (optional prompts.txt / "
                               ".txt captions). Relative = inside ComfyUI's output folder."}),
                "output_path": ("STRING", {
                    "default": "selva/textual_inversion",
                    "tooltip": "Folder for the runs (a new textual_inversion_NNN folder each run). "
                               "Relative = inside ComfyUI's output folder."}),
                **option_inputs(TiTrainOptions, cls.REQUIRED),
            },
            "optional": {
                **option_inputs(TiTrainOptions, cls.OPTIONAL[:1]),
                "resume": ("STRING", {
                    "default": "",
                    "tooltip": "Empty = a fresh run; 'latest' = the newest run in output_path; or a "
                               "checkpoint / run folder path."}),
                **option_inputs(TiTrainOptions, cls.OPTIONAL[1:]),
            },
        }

    def train(self, model: Any, data_dir: str, output_path: str, resume: str = "",
              **settings: Any) -> tuple[str, Any]:
        from ..selva.style.textual_inversion import TiTrainOptions, train_textual_inversion
        from ..selva.train.options import from_inputs
        from ..selva.train.plots import image_tensor

        with comfy_run():
            options = from_inputs(TiTrainOptions, settings)
            run = train_textual_inversion(model, paths.resolve_existing(data_dir, "data_dir"),
                                          paths.resolve(output_path, "output_path"), options,
                                          resume=paths.resume_arg(resume), hooks=make_hooks(preview=True))
        return (str(run.embedding.path), image_tensor(run.result.loss_curve))


class SelvaTextualInversionLoader:
    DESCRIPTION = "Loads learned prompt tokens saved by the SelVA Textual Inversion Trainer."
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        (TEXTUAL_INVERSION_TYPE, "textual_inversion",
         "Connect to the Sampler's or DITTO's textual_inversion input."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"path": ("STRING", {
            "default": "selva/textual_inversion/textual_inversion_001/embeddings_final.safetensors",
            "tooltip": "The .safetensors file. Relative = inside ComfyUI's output folder."})}}

    @classmethod
    def IS_CHANGED(cls, path: str) -> str:
        return paths.file_version(path)

    def load(self, path: str) -> tuple[Any]:
        from ..selva.style.textual_inversion import TextualInversion

        with comfy_run():
            return (TextualInversion.load(paths.resolve(path, "path")),)


class SelvaTiScheduler:
    DESCRIPTION = ("Runs several textual-inversion trainings from one experiments file (the same "
                   "JSON shape as the LoRA scheduler), encoding each dataset once, and compares "
                   "their loss curves. Runs already finished are skipped when run again.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("STRING", "summary_path",
         "experiment_summary.json of the sweep (status, losses, token files per run)."),
        ("IMAGE", "comparison_curves", "Every run's loss curve in one chart."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The SelVA model."}),
                "experiments_file": ("STRING", {
                    "default": "selva/ti_experiments.json",
                    "tooltip": 'JSON: {"base": {"data_dir": ..., "steps": 500}, "experiments": '
                               '[{"name": "t4", "n_tokens": 4}, {"name": "t8", "n_tokens": 8}]}. '
                               "Relative = inside ComfyUI's output folder."}),
            },
            "optional": {
                "output_path": ("STRING", {
                    "default": "selva/textual_inversion",
                    "tooltip": "The sweep folder goes inside (named after the experiments file). Relative = "
                               "inside ComfyUI's output folder."}),
            },
        }

    def run(self, model: Any, experiments_file: str, output_path: str = "selva/textual_inversion") -> tuple[str, Any]:
        from ..selva.style.textual_inversion import run_ti_sweep
        from ..selva.train.plots import image_tensor

        with comfy_run():
            result = run_ti_sweep(model, paths.resolve_existing(experiments_file, "experiments_file"),
                                  paths.resolve(output_path, "output_path"), hooks=make_hooks(preview=True),
                                  resolve_data_dir=lambda text: paths.resolve_existing(text, "data_dir"))
        return (str(result.summary_path), image_tensor(result.comparison))
