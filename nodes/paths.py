"""The one rule for every path a node takes (dataset, cache, sweep, reference, output folders).

A relative path is inside ComfyUI's output folder (outside ComfyUI: ``$SELVA_OUTPUT_DIR``, else
``./output``), for paths written and for paths read back later alike; an absolute path is used
as given; ``~`` expands. Older versions resolved some relative inputs from the working folder:
when a path read back is not in the output folder but is found under the old rule, the error
names both places instead of a bare "not found".
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from . import comfy_compat


output_directory = comfy_compat.output_directory

DATASETS_SUBDIR = "selva_datasets"


def _clean(path: Optional[str]) -> str:
    return (path or "").strip().strip('"').strip("'").strip()


def resolve(path: Optional[str], what: str, default: str = "") -> Path:
    """``path`` as given when absolute, else inside ComfyUI's output folder.

    An empty ``path`` takes ``default`` (itself resolved by the same rule); with no default it
    is an error."""
    from ..selva.errors import SelvaError

    text = _clean(path) or default
    if not text:
        raise SelvaError(f"{what} is empty: give a folder or file path (relative paths are inside "
                         f"ComfyUI's output folder, {output_directory()}).")
    p = Path(text).expanduser()
    return p if p.is_absolute() else output_directory() / p


def old_rule_place(path: Optional[str]) -> Optional[Path]:
    """Where a relative ``path`` pointed under the old working-folder rule (None if absolute)."""
    text = _clean(path)
    p = Path(text).expanduser()
    if not text or p.is_absolute():
        return None
    return Path.cwd() / p


def moved_error(what: str, new: Path, old: Path):
    from ..selva.errors import SelvaError

    return SelvaError(f"{what}: nothing at {new}. Relative paths are now inside ComfyUI's output "
                      f"folder ({output_directory()}); {old} (the old place, from the working "
                      f"folder) exists: move it to {new}, or give its absolute path.")


def resolve_existing(path: Optional[str], what: str, default: str = "") -> Path:
    """:func:`resolve` for a path read back: when it is missing there but present where the old
    rule put it, a clear error says where it must go now."""
    target = resolve(path, what, default)
    if not target.exists():
        old = old_rule_place(_clean(path) or default)
        if old is not None and old.exists() and old.resolve() != target.resolve():
            raise moved_error(what, target, old)
    return target


def resume_arg(resume: Optional[str]) -> Optional[str]:
    """A trainer's ``resume`` input: None (a fresh run), "latest", or a checkpoint / run folder
    (by the one rule, read back)."""
    text = (resume or "").strip()
    if not text or text == "latest":
        return text or None
    return str(resolve_existing(text, "resume"))


def dataset_folder(cache_dir: Optional[str], name: str) -> Path:
    """Where the Feature Extractor saves named clips: ``cache_dir`` by the one rule, or
    ``selva_datasets/<name>/`` in the output folder when it is empty (never the temp folder).

    A relative ``cache_dir`` that holds clips only at its old place (working folder) is an error
    naming the new place, so new clips never start a second, separate dataset."""
    if not _clean(cache_dir):
        return output_directory() / DATASETS_SUBDIR / name
    target = resolve(cache_dir, "cache_dir")
    old = old_rule_place(cache_dir)
    if (old is not None and not target.exists() and old.is_dir() and old.resolve() != target.resolve()
            and any(old.glob("*.npz"))):
        raise moved_error("cache_dir", target, old)
    return target


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
