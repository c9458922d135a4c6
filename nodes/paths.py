"""Path inputs of the style nodes: relative paths live in ComfyUI's output folder."""
from __future__ import annotations

from pathlib import Path

from . import comfy_compat


output_directory = comfy_compat.output_directory


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


def file_version(path: str) -> str:
    """What ``IS_CHANGED`` returns for a file input: a file replaced at the same path is read
    again (ComfyUI caches node outputs by input values). A missing file is reported by the
    node itself."""
    try:
        p = resolve(path, "path")
        st = p.stat()
    except Exception:
        return f"missing:{path}"
    return f"{p}:{st.st_size}:{st.st_mtime_ns}"
