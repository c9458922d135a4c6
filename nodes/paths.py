"""Path inputs of the style nodes: relative paths live in ComfyUI's output folder."""
from __future__ import annotations

import os
from pathlib import Path

from . import comfy_compat


def output_directory() -> Path:
    """ComfyUI's output folder (outside ComfyUI: $SELVA_OUTPUT_DIR, else ./output)."""
    fp = comfy_compat.folder_paths
    if fp is not None:
        return Path(fp.get_output_directory())
    return Path(os.environ.get("SELVA_OUTPUT_DIR", "output"))


def resolve(path: str, what: str) -> Path:
    """``path`` as given when absolute, else inside ComfyUI's output folder; ``~`` expands."""
    from ..selva.errors import SelvaError

    text = (path or "").strip()
    if not text:
        raise SelvaError(f"{what} is empty: give a folder or file path (relative paths are inside "
                         f"ComfyUI's output folder).")
    p = Path(text).expanduser()
    return p if p.is_absolute() else output_directory() / p


def with_suffix(path: Path, suffix: str) -> Path:
    """``path`` ending in ``suffix`` (added when the user gave a bare name)."""
    return path if path.suffix.lower() == suffix else path.with_name(path.name + suffix)
