"""Warn at start-up when another installed pack registers SelVA's node ids.

The earlier SelVA pack (ethanfel/ComfyUI-SelVA) uses the same 20 node ids as this one. ComfyUI
keeps whichever pack it imports last for each id, without a word, so a workflow may run the
other pack's node. Nothing is imported from the other folder: its registration files are read
as text, which is enough to find the ids (they are written there as string literals).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Optional

from . import comfy_compat

log = logging.getLogger(__name__)

# Where packs write their NODE_CLASS_MAPPINGS: the package entry and a nodes/ package. Larger
# files are not read (a registration table is a few kB).
_REGISTRATION_FILES = ("__init__.py", "nodes/__init__.py", "nodes.py")
_MAX_BYTES = 512 * 1024
GUIDE = "docs/coming-from-earlier-pack.md"


def _custom_nodes_dirs(own_dir: Path) -> list[Path]:
    # Only inside ComfyUI: elsewhere (the command line, tests) no other pack can take our ids, and
    # the checkout's sibling folders are not custom nodes.
    fp = comfy_compat.folder_paths
    if fp is None:
        return []
    dirs = [own_dir.parent]
    try:
        dirs += [Path(p) for p in fp.get_folder_paths("custom_nodes")]
    except Exception:  # noqa: BLE001 - a start-up check must never stop ComfyUI
        pass
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and all(d.resolve() != u.resolve() for u in unique):
            unique.append(d)
    return unique


def _shared_ids(folder: Path, node_ids: Iterable[str]) -> list[str]:
    text = ""
    for name in _REGISTRATION_FILES:
        path = folder / name
        try:
            if path.is_file() and path.stat().st_size <= _MAX_BYTES:
                text += path.read_text(errors="replace")
        except OSError:
            continue
    return [i for i in node_ids if f'"{i}"' in text or f"'{i}'" in text]


def find_other_selva_packs(own_dir: Path, node_ids: Iterable[str],
                           custom_nodes_dirs: Optional[list[Path]] = None) -> dict[Path, list[str]]:
    """Other pack folders (ComfyUI would load them) mapped to the SelVA node ids they register."""
    node_ids = list(node_ids)
    found: dict[Path, list[str]] = {}
    own = own_dir.resolve()
    for parent in custom_nodes_dirs if custom_nodes_dirs is not None else _custom_nodes_dirs(own_dir):
        try:
            children = sorted(parent.iterdir())
        except OSError:
            continue
        for child in children:
            # ComfyUI skips folders named *.disabled and hidden ones; so do we.
            if (not child.is_dir() or child.name.endswith(".disabled") or child.name.startswith(".")
                    or child.resolve() == own):
                continue
            shared = _shared_ids(child, node_ids)
            if shared:
                found[child] = shared
    return found


def warn_about_other_selva_packs(own_dir: Path, node_ids: Iterable[str],
                                 custom_nodes_dirs: Optional[list[Path]] = None) -> dict[Path, list[str]]:
    """Log one warning per other pack that registers our node ids; return what was found."""
    try:
        found = find_other_selva_packs(own_dir, node_ids, custom_nodes_dirs)
    except Exception:  # noqa: BLE001 - a start-up check must never stop ComfyUI
        log.debug("could not look for other SelVA packs", exc_info=True)
        return {}
    for folder, shared in found.items():
        log.warning(
            "ComfyUI-SelVA: the custom node folder %s also registers %d of SelVA's node ids (%s). "
            "ComfyUI keeps only one node per id, so workflows may silently run the other pack's "
            "nodes. Keep one pack: remove that folder or rename it to '%s.disabled', then restart "
            "ComfyUI. Moving from the earlier SelVA pack: see %s in %s.",
            folder, len(shared), ", ".join(shared[:4]) + (", ..." if len(shared) > 4 else ""),
            folder.name, GUIDE, own_dir)
    return found
