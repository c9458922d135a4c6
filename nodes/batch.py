"""SelVA Batch Generate: every video of a folder (or a manifest's rows) to audio files."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from . import comfy_compat, paths
from .common import CATEGORY, MODEL_TYPE, audio_output, comfy_run, outputs
from .sampler import DEFAULT_OVERLAP_SECONDS, DEFAULT_WINDOW_SECONDS, MAX_SEED

log = logging.getLogger(__name__)

# as selva.batch.AUDIO_FORMATS (not imported: ComfyUI reads INPUT_TYPES before any torch import)
FORMATS = ("flac", "wav", "m4a", "mp3", "opus")


def input_directory() -> Path:
    """ComfyUI's input folder (outside ComfyUI: ``$SELVA_INPUT_DIR``, else ``./input``)."""
    fp = comfy_compat.folder_paths
    if fp is not None:
        return Path(fp.get_input_directory())
    return Path(os.environ.get("SELVA_INPUT_DIR", "input")).absolute()


def resolve_source(text: str) -> Path:
    """The folder or manifest the user typed: absolute as it is, else inside ComfyUI's input folder."""
    from ..selva.errors import SelvaError

    raw = (text or "").strip().strip('"')
    if not raw:
        raise SelvaError("folder is empty: give a folder of videos or a manifest (.csv/.jsonl), relative "
                         "to ComfyUI's input folder or absolute.")
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else input_directory() / path
    if not path.exists():
        raise SelvaError(f"{path} does not exist: give a folder of videos or a manifest (.csv/.jsonl), "
                         f"relative to ComfyUI's input folder ({input_directory()}) or absolute.")
    return path


class _RowProgress:
    """One ComfyUI progress bar over the rows, showing a frame of the row just finished."""

    def __init__(self) -> None:
        self.progress = comfy_compat.StageProgress()

    def __call__(self, result: Any, done: int, total: int, preview: Any) -> None:
        image = None
        if preview is not None:
            from PIL import Image

            image = Image.fromarray(preview.cpu().numpy())
        self.progress("rows", done, total, image)


def first_audio(results: list) -> dict:
    """The first row's audio (read back from its file) as ComfyUI AUDIO; a failed first row gives
    the first row that has audio."""
    from ..selva.errors import SelvaError
    from ..selva.train.audio_files import read_audio

    for r in results:
        if r.status in ("done", "skipped") and r.outputs:
            if r is not results[0]:
                log.warning("The first row failed (%s); returning the audio of %s.", results[0].error, r.name)
            wave, rate = read_audio(Path(r.outputs[0]))
            return audio_output(wave[None], rate)
    raise SelvaError(f"Every row failed; the first: {results[0].name}: {results[0].error}" if results
                     else "There were no rows.")


class SelvaBatchGenerate:
    DESCRIPTION = ("Generates audio for every video in a folder (or every row of a .csv/.jsonl "
                   "manifest) with one loaded model, writing <name>.<format> files and results.jsonl "
                   "into a folder under ComfyUI's output folder. Rows whose files exist are skipped, "
                   "so queueing it again after a Cancel continues where it stopped.")
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    OUTPUT_NODE = True
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("STRING", "results_path",
         "Path of results.jsonl: one line per row (name, video, "
         "prompt, seed, status, error, seconds, outputs)."),
        ("AUDIO", "audio", "The first row's audio, to preview."))

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The pipeline from SelVA Model Loader."}),
                "folder": ("STRING", {
                    "default": "videos",
                    "tooltip": "A folder of videos (searched recursively; other files are ignored) or "
                               "a manifest (.csv with a header, or .jsonl) with columns video, prompt, "
                               "negative_prompt, seed, start, duration, name. Relative to ComfyUI's "
                               "input folder; absolute paths work too."}),
                "prompt": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "The sound to generate, for every video (manifest rows may give their own)."}),
                "negative_prompt": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "Sounds to steer away from, e.g. 'music, speech'. Empty = none."}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 200,
                                  "tooltip": "Euler sampling steps (official: 25)."}),
                "cfg_strength": ("FLOAT", {"default": 4.5, "min": 0.0, "max": 20.0, "step": 0.1,
                                           "tooltip": "Classifier-free guidance strength (official: 4.5)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "Noise seed of every row without its own; the same seed "
                                            "and video give the same audio. Keep the control on "
                                            "'fixed' so a re-queue after Cancel uses the same seed."}),
                "output_folder": ("STRING", {
                    "default": "selva_batch",
                    "tooltip": "Folder under ComfyUI's output folder for the audio files, muxed "
                               "videos and results.jsonl."}),
                "duration": ("FLOAT", {
                    "default": 8.0, "min": 0.0, "max": 600.0, "step": 0.1,
                    "tooltip": "Seconds of each video from its start (0 = the whole video)."}),
                "normalize": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Loudness-normalise to target_lufs (ITU-R BS.1770), never clipping."}),
            },
            "optional": {
                "target_lufs": ("FLOAT", {"default": -27.0, "min": -70.0, "max": -5.0, "step": 0.5,
                                          "tooltip": "Loudness target in LUFS when normalize is on."}),
                "window_seconds": ("FLOAT", {
                    "default": DEFAULT_WINDOW_SECONDS, "min": 0.96, "max": 600.0, "step": 0.32,
                    "tooltip": "Longer videos are sampled in overlapping windows of this length."}),
                "overlap_seconds": ("FLOAT", {
                    "default": DEFAULT_OVERLAP_SECONDS, "min": 0.32, "max": 599.0, "step": 0.32,
                    "tooltip": "How much neighbouring windows share."}),
                "format": (list(FORMATS), {"default": "flac", "tooltip": "Audio file format."}),
                "mux": ("BOOLEAN", {"default": False,
                                    "tooltip": "Also write <name>.mp4: the video with the new audio."}),
                "overwrite": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Redo rows whose files exist (off: skip them, so a re-queue resumes)."}),
                "batch_rows": ("INT", {
                    "default": 1, "min": 1, "max": 64,
                    "tooltip": "Sample up to this many videos of the same length together: the same "
                               "audio, faster on a GPU."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs: Any) -> float:
        # The folder's content can change between runs; rows already made are skipped anyway.
        return float("nan")

    def generate(self, model: Any, folder: str, prompt: str, negative_prompt: str, steps: int,
                 cfg_strength: float, seed: int, output_folder: str, duration: float, normalize: bool,
                 target_lufs: Optional[float] = -27.0,
                 window_seconds: Optional[float] = DEFAULT_WINDOW_SECONDS,
                 overlap_seconds: Optional[float] = DEFAULT_OVERLAP_SECONDS, format: Optional[str] = "flac",
                 mux: Optional[bool] = False, overwrite: Optional[bool] = False,
                 batch_rows: Optional[int] = 1) -> tuple[str, dict]:
        from ..selva.batch import BatchOptions, RowDefaults, rows_from_folder, rows_from_manifest, run_batch
        from ..selva.batch.results import RESULTS_NAME, summary_line
        from ..selva.errors import SelvaError
        from ..selva.hooks import Hooks

        with comfy_run():
            source = resolve_source(folder)
            defaults = RowDefaults(prompt=prompt, negative_prompt=negative_prompt, seed=int(seed),
                                   duration=float(duration))
            if source.is_dir():
                if not prompt.strip():
                    raise SelvaError("prompt is empty: a folder of videos needs the sound to generate.")
                rows = rows_from_folder(source, defaults)
            else:
                rows = rows_from_manifest(source, defaults)
            out_dir = paths.resolve(output_folder, "output_folder", "selva_batch")
            options = BatchOptions(
                out_dir=out_dir, format=format or "flac", steps=int(steps), cfg_strength=float(cfg_strength),
                normalize=bool(normalize), target_lufs=-27.0 if target_lufs is None else float(target_lufs),
                window_seconds=DEFAULT_WINDOW_SECONDS if window_seconds is None else float(window_seconds),
                overlap_seconds=DEFAULT_OVERLAP_SECONDS if overlap_seconds is None else float(overlap_seconds),
                mux=bool(mux), overwrite=bool(overwrite), batch_rows=int(batch_rows or 1))
            results = run_batch(model, rows, options, on_row=_RowProgress(),
                                hooks=Hooks(interrupted=comfy_compat.processing_interrupted))
            log.info("SelVA Batch Generate: %s (%s)", summary_line(results), out_dir)
            return (str(out_dir / RESULTS_NAME), first_audio(results))
