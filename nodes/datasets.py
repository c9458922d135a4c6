"""Dataset nodes: a folder of videos to a training dataset, its report, and the audio chain
(``SelvaDataset*``) on the AUDIO_DATASET type. Thin glue: the work is in ``selva/datasets``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import paths
from .common import CATEGORY, MODEL_TYPE, comfy_run, make_hooks




def _folder_version(folder: Path) -> str:
    """Names, sizes and times of a folder's files: a re-queue after a change runs again."""
    try:
        return "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                        for p in sorted(folder.iterdir()) if p.is_file())
    except OSError:
        return f"missing:{folder}"


class SelvaDatasetFromFolder:
    DESCRIPTION = ("Turns a folder of videos into a training dataset in one queue: cuts long videos "
                   "into clips, takes each clip's audio from the video's own sound track (or a clean "
                   "same-name audio file beside it), leaves out silent clips, extracts the features "
                   "and writes dataset.json. Cancel keeps finished clips; queue again to continue.")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("STRING", "INT")
    RETURN_NAMES = ("dataset_dir", "clips")
    OUTPUT_TOOLTIPS = ("The dataset folder (for the LoRA Trainer's data_dir, Dataset Report, ...).",
                       "How many clips the dataset holds now.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The pipeline from SelVA Model Loader (its encoders)."}),
                "videos_dir": ("STRING", {"default": "selva_videos", "tooltip":
                               "Folder of videos. Relative = inside ComfyUI's output folder."}),
                "out_dir": ("STRING", {"default": "selva_datasets/my_dataset", "tooltip":
                            "Dataset folder to write or continue. Relative = inside ComfyUI's output folder."}),
                "prompt": ("STRING", {"default": "", "multiline": True, "tooltip":
                           "The prompt of every video without a CSV row or a same-name .txt caption."}),
            },
            "optional": {
                "prompts_csv": ("STRING", {"default": "", "tooltip":
                                "Optional CSV with file and prompt columns (relative = output folder)."}),
                "clip_seconds": ("FLOAT", {"default": 8.0, "min": 0.5, "max": 600.0, "step": 0.1, "tooltip":
                                 "Cut long videos into clips this long (8 s: what the models saw). "
                                 "A shorter video is one clip of its whole length."}),
                "hop_seconds": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 600.0, "step": 0.1, "tooltip":
                                "Seconds from one clip's start to the next. 0 = clip_seconds (no overlap)."}),
                "min_loudness_lufs": ("FLOAT", {"default": -50.0, "min": -70.0, "max": 0.0, "step": 0.5,
                                      "tooltip": "Clips quieter than this are left out (listed with "
                                                 "the reason in dataset.json under left_out)."}),
                "target_lufs": ("FLOAT", {"default": 0.0, "min": -70.0, "max": 0.0, "step": 0.5, "tooltip":
                                "Loudness-normalise each clip's audio to this (BS.1770, never clipping). "
                                "0 = off: the audio as recorded."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, videos_dir: str = "", out_dir: str = "", **_kw) -> str:
        try:
            videos, out = paths.resolve(videos_dir, "videos_dir"), paths.resolve(out_dir, "out_dir")
        except Exception:
            return "invalid"
        return _folder_version(videos) + "#" + _folder_version(out)

    def make(self, model: Any, videos_dir: str, out_dir: str, prompt: str, prompts_csv: str = "",
             clip_seconds: float = 8.0, hop_seconds: float = 0.0, min_loudness_lufs: float = -50.0,
             target_lufs: float = 0.0) -> tuple[str, int]:
        from ..selva.datasets.folder import PrepareOptions, prepare_dataset

        opts = PrepareOptions(
            videos_dir=paths.resolve_existing(videos_dir, "videos_dir"),
            out_dir=paths.resolve(out_dir, "out_dir"), prompt=prompt,
            csv_path=paths.resolve_existing(prompts_csv, "prompts_csv") if prompts_csv.strip() else None,
            clip_seconds=float(clip_seconds), hop_seconds=float(hop_seconds),
            min_loudness_lufs=float(min_loudness_lufs),
            target_lufs=float(target_lufs) if target_lufs < 0 else None)
        with comfy_run():
            index = prepare_dataset(model, opts, make_hooks())
        return str(opts.out_dir), len(index.clips)


class SelvaDatasetReport:
    DESCRIPTION = ("Measures every clip of a dataset folder (duration, integrated loudness, peak, "
                   "clipped samples, silent fraction, prompt) and flags clips that are silent, "
                   "clipped, too short, or whose audio and features disagree in duration. Writes "
                   "dataset_report.md/.json/.png into the dataset folder.")
    CATEGORY = CATEGORY
    FUNCTION = "report"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "report_path")
    OUTPUT_TOOLTIPS = ("Histograms of duration, loudness, peak and silence, with the flag counts.",
                       "The report table (dataset_report.md).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "dataset_dir": ("STRING", {"default": "selva_datasets/my_dataset", "tooltip":
                            "The dataset folder. Relative = inside ComfyUI's output folder."}),
        }}

    @classmethod
    def IS_CHANGED(cls, dataset_dir: str = "", **_kw) -> str:
        try:
            return _folder_version(paths.resolve(dataset_dir, "dataset_dir"))
        except Exception:
            return "invalid"

    def report(self, dataset_dir: str) -> tuple[Any, str]:
        from ..selva.datasets.report import build_report, write_report
        from ..selva.train.plots import image_tensor

        with comfy_run():
            report = build_report(paths.resolve_existing(dataset_dir, "dataset_dir"), hooks=make_hooks())
        table, image = write_report(report)
        return image_tensor(image), str(table)
