"""Training nodes: LoRA Trainer, LoRA Scheduler (sweeps), Skip Experiment, Dataset Browser.

Thin glue: every piece of training lives in ``selva/train``. Relative paths are read and
written inside ComfyUI's output folder.
"""
from __future__ import annotations

from typing import Any

from . import comfy_compat, paths
from .common import (CATEGORY, FEATURES_TYPE, LORA_TYPE, MODEL_TYPE, comfy_run, image_output, make_hooks,
                     outputs)
from .options import option_inputs


def _image(pil) -> Any:
    from ..selva.train.plots import blank_image, image_tensor

    return image_tensor(pil if pil is not None else blank_image("no loss curve"))


class SelvaLoraTrainer:
    DESCRIPTION = ("Trains a LoRA adapter for the SelVA generator on a dataset folder (features .npz + "
                   "same-name audio per clip). Writes checkpoints, adapters, loss curves and eval "
                   "samples into a fresh numbered run folder; cancel saves a checkpoint to resume from.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        (LORA_TYPE, "adapter", "The trained adapter (connect to SelVA LoRA Loader's adapter input)."),
        ("STRING", "summary_path", "The run's meta.json (settings, losses, files)."),
        ("IMAGE", "loss_curve", "Raw and smoothed loss curve."))
    OUTPUT_NODE = True

    # Settings shown, in the order saved workflows store them (new ones go at the end of OPTIONAL).
    REQUIRED = ("steps", "rank", "alpha", "target", "lr", "warmup_steps", "batch_size", "grad_accum",
                "save_every", "timestep_sampling", "seed")
    OPTIONAL = ("init", "rslora", "gradient_checkpointing", "lora_dropout", "lora_plus_ratio", "lr_schedule",
                "logit_normal_sigma", "curriculum_switch", "latent_mixup_alpha", "latent_noise_sigma",
                "spectral_surgery")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        from ..selva.train.lora_trainer import LoraTrainOptions

        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The pipeline from SelVA Model Loader."}),
                "data_dir": ("STRING", {"default": "selva_dataset", "tooltip":
                             "Dataset folder: per clip a features .npz and a same-name audio file. "
                             "Relative = inside ComfyUI's output folder."}),
                "output_dir": ("STRING", {"default": "selva_lora", "tooltip":
                               "Where run folders lora_001, lora_002, ... go. Relative = inside "
                               "ComfyUI's output folder."}),
                **option_inputs(LoraTrainOptions, cls.REQUIRED),
            },
            "optional": {
                "resume": ("STRING", {"default": "", "tooltip":
                           "Continue a run: a checkpoints/step_NNNNNN.pt path, a run folder, or "
                           "'latest' (newest run in output_dir). Empty = new run."}),
                **option_inputs(LoraTrainOptions, cls.OPTIONAL[:3]),
                "eval_features": (FEATURES_TYPE, {"tooltip":
                                  "The clip eval samples are made from (default: the first dataset clip)."}),
                **option_inputs(LoraTrainOptions, cls.OPTIONAL[3:]),
            },
        }

    def train(self, model: Any, data_dir: str, output_dir: str, resume: str = "",
              eval_features: Any = None, **settings: Any) -> tuple[Any, str, Any]:
        from ..selva.train.lora_trainer import LoraTrainOptions, train_lora
        from ..selva.train.options import from_inputs

        options = from_inputs(LoraTrainOptions, settings)
        with comfy_run():
            run = train_lora(model, paths.resolve_existing(data_dir, "data_dir"),
                             paths.resolve(output_dir, "output_dir", "selva_lora"), options,
                             resume=paths.resume_arg(resume), eval_features=eval_features,
                             hooks=make_hooks(preview=True))
        comfy_compat.empty_cache()
        return run.adapter, str(run.summary_path), _image(run.result.loss_curve)


class SelvaLoraScheduler:
    DESCRIPTION = ("Runs a sweep of LoRA trainings from an experiments JSON file (base settings + "
                   "per-experiment overrides), encoding the dataset once. Re-running skips finished "
                   "experiments; a failing one is recorded and the sweep goes on. Use the 'skip "
                   "running experiment' button (or python -m selva skip <sweep folder>) to end one early. "
                   "With held_out_dir set, the finished adapters and the base model are then scored on "
                   "those held-out clips and the sweep is ranked by rank_by (see LORA_TRAINING.md).")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("STRING", "summary_path",
         "experiment_summary.json: per experiment its settings, status, "
         "losses, time, adapter path, error and (ranked) held-out metrics."),
        ("IMAGE", "comparison_curves", "Every experiment's smoothed loss curve, labelled."),
        ("STRING", "ranking",
         "The best experiment and the ranking on the held-out clips (empty when not ranked)."),
        ("IMAGE", "metrics_chart", "One bar chart per metric, the best model marked (blank when not ranked)."))
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        from ..selva.evaluation.options import ALL_METRICS

        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The pipeline from SelVA Model Loader."}),
                "experiments_file": ("STRING", {"default": "selva_sweep.json", "tooltip":
                                     "JSON: {\"base\": {trainer inputs}, \"experiments\": [{\"name\": ..., "
                                     "overrides}]}. Relative = inside ComfyUI's output folder."}),
            },
            "optional": {
                "output_dir": ("STRING", {"default": "selva_sweeps", "tooltip":
                               "The sweep folder is <output_dir>/<experiments file name>. Relative = "
                               "inside ComfyUI's output folder."}),
                "held_out_dir": ("STRING", {"default": "", "tooltip":
                                 "Rank the sweep: a dataset folder of clips left out of training. After the "
                                 "experiments, the base model and each finished adapter generate every clip "
                                 "and are scored. Empty = the experiments file's \"evaluation\" (or no "
                                 "ranking). Relative = inside ComfyUI's output folder."}),
                "rank_by": (list(ALL_METRICS), {"default": "desync", "tooltip":
                            "The metric the sweep is ranked by (with held_out_dir); whether lower or higher "
                            "is better is the metric's own (LORA_TRAINING.md lists them)."}),
            },
        }

    def run(self, model: Any, experiments_file: str, output_dir: str = "selva_sweeps", held_out_dir: str = "",
            rank_by: str = "desync") -> tuple[str, Any, str, Any]:
        from ..selva.train.sweep import run_sweep
        from ..selva.train.sweep_ranking import ranking_text

        rank = {"held_out_dir": held_out_dir.strip(), "rank_by": rank_by} if held_out_dir.strip() else None
        with comfy_run():
            result = run_sweep(model, paths.resolve_existing(experiments_file, "experiments_file"),
                               paths.resolve(output_dir, "output_dir", "selva_sweeps"),
                               resolve_data_dir=lambda text: paths.resolve_existing(text, "data_dir"),
                               hooks=make_hooks(preview=True), rank=rank)
        comfy_compat.empty_cache()
        if result.metrics_chart is None:  # not ranked this time (an earlier ranking may stay in the file)
            return str(result.summary_path), _image(result.comparison), "", _image(None)
        return (str(result.summary_path), _image(result.comparison), ranking_text(result.summary),
                image_output(result.metrics_chart))


class SelvaSkipExperiment:
    DESCRIPTION = ("Ends the running experiment of a sweep (its adapter is saved) so the sweep goes on "
                   "with the next. ComfyUI runs one prompt at a time, so while a sweep runs use the "
                   "Scheduler node's 'skip running experiment' button, POST /selva/skip, or "
                   "python -m selva skip <sweep folder>; this node writes the same flag (e.g. from a "
                   "second ComfyUI or the API).")
    CATEGORY = CATEGORY
    FUNCTION = "skip"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("STRING", "flag_path", "The flag file the running sweep watches."))
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"sweep_dir": ("STRING", {"default": "", "tooltip":
                "The sweep folder (<output_dir>/<experiments file name>; relative = inside ComfyUI's "
                "output folder). Empty = the sweep running in this ComfyUI."})}}

    @classmethod
    def IS_CHANGED(cls, **_kw) -> float:
        return float("nan")  # a skip is an action: run every time it is queued

    def skip(self, sweep_dir: str) -> tuple[str]:
        from ..selva.train.sweep import request_skip

        target = paths.resolve(sweep_dir, "sweep_dir") if sweep_dir.strip() else None
        return (str(request_skip(target)),)


class SelvaDatasetBrowser:
    DESCRIPTION = ("Reads one clip of a dataset: its files and label. Takes a dataset folder or its "
                   "dataset.json; datasets made with SelVA Dataset From Folder, prepare-dataset or the "
                   "Feature Extractor's name input all work.")
    CATEGORY = CATEGORY
    FUNCTION = "browse"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("STRING", "video_path", "The source video of the clip (empty when the dataset does not record it)."),
        ("STRING", "audio_path", "The clip's audio file."),
        ("STRING", "frames_dir", "Its kept frames (empty when frames were not kept)."),
        ("STRING", "label", "The clip's prompt."),
        ("INT", "total", "How many clips the dataset holds."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "dataset_json": ("STRING", {"default": "selva_dataset/dataset.json", "tooltip":
                             "The dataset folder or its dataset.json. Relative = inside ComfyUI's "
                             "output folder."}),
            "index": ("INT", {"default": 0, "min": 0, "max": 1_000_000, "tooltip": "Which clip (0 = first)."}),
        }}

    def browse(self, dataset_json: str, index: int) -> tuple[str, str, str, str, int]:
        from ..selva.datasets.folder import dataset_entries
        from ..selva.errors import SelvaError

        path = paths.resolve_existing(dataset_json, "dataset_json")
        root, clips = dataset_entries(path)
        total = len(clips)
        if not 0 <= index < total:
            raise SelvaError(f"index {index} is out of range: {path} holds {total} clip(s) "
                             f"(0 .. {max(total - 1, 0)}).")
        clip = clips[index]
        frames = str(root / clip.frames_dir) if clip.frames_dir else ""
        # an absolute audio path stays as it is: joining onto an absolute path gives that path
        return (clip.video, str(root / clip.audio), frames, clip.label, total)


# ---------------------------------------------------------------------------------- HTTP route
def register_routes() -> bool:
    """``POST /selva/skip`` ({"sweep_dir": optional}) on ComfyUI's server: skipping works while a
    sweep runs (a queued node would only run after it). Returns whether a server was there."""
    try:
        from server import PromptServer  # type: ignore[import-not-found]
        from aiohttp import web
    except ImportError:
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return False

    async def skip(request):
        from ..selva.errors import SelvaError
        from ..selva.train.sweep import active_sweeps, request_skip

        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            body = {}
        folder = str(body.get("sweep_dir", "")).strip() if isinstance(body, dict) else ""
        try:
            flag = request_skip(paths.resolve(folder, "sweep_dir") if folder else None)
        except SelvaError as e:
            return web.json_response({"error": str(e), "active": [str(p) for p in active_sweeps()]},
                                     status=409)
        return web.json_response({"flag_path": str(flag)})

    instance.routes.post("/selva/skip")(skip)
    return True
