"""The few pieces of ComfyUI the nodes use, with stand-ins when ComfyUI is absent.

Inside ComfyUI, ``folder_paths``, ``comfy.model_management`` and ``comfy.utils`` are top-level
modules that already exist when custom nodes are imported. Tests and the CLI run without them,
so every use goes through this module, which falls back to plain behaviour (a temp folder, no
progress bar, never interrupted).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

log = logging.getLogger(__name__)

try:  # pragma: no cover - exercised only inside ComfyUI
    import folder_paths  # type: ignore[import-not-found]
except ImportError:
    folder_paths = None

try:  # pragma: no cover - exercised only inside ComfyUI
    import comfy.model_management as model_management  # type: ignore[import-not-found]
except ImportError:
    model_management = None

try:  # pragma: no cover - exercised only inside ComfyUI
    from comfy.model_patcher import ModelPatcher  # type: ignore[import-not-found]
except ImportError:
    ModelPatcher = None

try:  # pragma: no cover - exercised only inside ComfyUI
    from comfy.utils import ProgressBar  # type: ignore[import-not-found]
except ImportError:
    ProgressBar = None

FOLDER_NAME = "selva"
# Released checkpoints are .pth/.pt, Hugging Face snapshots bring .bin/.safetensors/.json and
# tokenizer files. Listed explicitly: a folder registered by extra_model_paths.yaml alone
# would otherwise have no extensions and list nothing.
MODEL_EXTENSIONS = frozenset({".pth", ".pt", ".bin", ".safetensors", ".json", ".model", ".txt"})


# ----------------------------------------------------------------------------- model folders
def register_models_folder(fp: Any = None) -> None:
    """Register ``models/selva`` with ComfyUI, keeping paths from extra_model_paths.yaml.

    ComfyUI reads extra_model_paths.yaml before loading custom nodes, so a ``selva:`` entry
    there already exists (with no extensions); its paths stay first, ours is appended.
    """
    fp = fp if fp is not None else folder_paths
    if fp is None:
        return
    default = os.path.join(fp.models_dir, FOLDER_NAME)
    table = fp.folder_names_and_paths
    paths, exts = table.get(FOLDER_NAME, ([], ()))
    paths = list(paths)
    if default not in paths:
        paths.append(default)
    table[FOLDER_NAME] = (paths, set(exts) | MODEL_EXTENSIONS)


def candidate_models_dirs() -> list[Path]:
    """Every folder that may hold SelVA weights, most preferred first."""
    if folder_paths is not None and FOLDER_NAME in folder_paths.folder_names_and_paths:
        return [Path(p) for p in folder_paths.get_folder_paths(FOLDER_NAME)]
    from ..selva.weights import default_models_dir

    return [default_models_dir()]


def pick_models_dir(relative_files: Iterable[str], candidates: Optional[list[Path]] = None) -> Path:
    """The candidate folder holding most of ``relative_files`` (the first one when none has any).

    Downloads go to the chosen folder, so a user who points extra_model_paths.yaml at a big
    disk gets the weights there.
    """
    candidates = candidates if candidates is not None else candidate_models_dirs()
    rels = list(relative_files)
    return max(candidates, key=lambda directory: sum((directory / rel).is_file() for rel in rels))


def comfy_temp_dir() -> Path:
    """ComfyUI's own temp folder (emptied at each start; Save Video keeps what the user wants);
    outside ComfyUI the system temp folder."""
    if folder_paths is not None:
        return Path(folder_paths.get_temp_directory())
    return Path(tempfile.gettempdir())


def video_from_file(path: Path) -> Any:
    """ComfyUI's VIDEO for a file (what Load Video returns); outside ComfyUI a stand-in with the
    same ``get_stream_source``."""
    try:
        from comfy_api.input_impl import VideoFromFile  # type: ignore[import-not-found]
    except ImportError:
        return _FileVideo(str(path))
    return VideoFromFile(str(path))


class _FileVideo:
    def __init__(self, path: str):
        self.path = path

    def get_stream_source(self) -> str:
        return self.path


# ---------------------------------------------------------------------------- device / VRAM
def torch_device() -> Optional[str]:
    """ComfyUI's chosen device (respects --cpu, --directml...), or None to let the core pick."""
    if model_management is None:
        return None
    try:
        return str(model_management.get_torch_device())
    except Exception as e:  # a broken device set-up should not hide our own error messages
        log.warning("Could not ask ComfyUI for its device (%s); choosing one ourselves.", e)
        return None


def make_room_for_stage(bytes_needed: int, device: Any) -> None:
    """Before a SelVA stage moves to the GPU: ask ComfyUI to unload its own models until
    ``bytes_needed`` fit (the core calls this; outside ComfyUI it does nothing)."""
    if model_management is None or getattr(device, "type", str(device)) == "cpu":
        return
    try:
        model_management.free_memory(int(bytes_needed), device)
    except Exception as e:  # never fail a run because ComfyUI could not unload something
        log.warning("ComfyUI could not free VRAM for SelVA: %s", e)


def empty_cache() -> None:
    """Return cached VRAM to the system after a run."""
    if model_management is not None:
        model_management.soft_empty_cache()
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------- progress / interrupt
def processing_interrupted() -> bool:
    return bool(model_management is not None and model_management.processing_interrupted())


def interrupt_exception() -> Optional[type]:
    """ComfyUI's own "interrupted" exception, so a cancel shows as a cancel, not an error."""
    if model_management is None:
        return None
    return getattr(model_management, "InterruptProcessingException", None)


PREVIEW_MAX_SIZE = 512


def output_directory() -> Path:
    """ComfyUI's output folder, where every relative path input (adapters, runs, vectors,
    vocoders) starts. Outside ComfyUI: ``$SELVA_OUTPUT_DIR``, else ``./output``."""
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    return Path(os.environ.get("SELVA_OUTPUT_DIR", "output")).absolute()


class StageProgress:
    """Feeds (stage, done, total) reports into one ComfyUI progress bar per stage."""

    def __init__(self) -> None:
        self._stage: Optional[str] = None
        self._bar: Any = None

    def __call__(self, stage: str, done: int, total: int, image: Any = None) -> None:
        """``image`` (a PIL image, e.g. the live loss curve) shows as the node's preview."""
        if stage != self._stage:
            self._stage = stage
            self._bar = ProgressBar(max(int(total), 1)) if ProgressBar is not None else None
            log.debug("SelVA stage: %s", stage)
        if self._bar is not None:
            preview = ("PNG", image, PREVIEW_MAX_SIZE) if image is not None else None
            self._bar.update_absolute(int(done), max(int(total), 1), preview)
