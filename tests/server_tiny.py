"""The tiny test variants as a real ComfyUI server sees them: same names, files of their own.

``tests/tiny.py``'s ``tiny_16k`` / ``tiny_44k`` reuse the released file names (their models
folder is a private one). Inside the test server the full-size small_16k folder is registered
too, and the pack picks, per variant, the folder holding most of that variant's files: so here
the tiny variants read ``weights/tiny_<name>`` files that no released variant uses, and a server
with both folders loads each variant from its own. The Hugging Face snapshots keep their
standard place (``hf/<org>--<name>``) in each folder.

Imported by the test custom node (inside ComfyUI) and by the fixtures (to write the folder).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import tiny

from comfyui_selva.selva import variants as V
from comfyui_selva.selva import weights as W

# VariantSpec fields that name a file in weights.FILES
_FILE_FIELDS = ("generator_file", "vae_file", "video_enc_file", "vocoder_file")
PREFIX = "tiny_"


def _own_file(key: str) -> W.WeightFile:
    wf = W.FILES[key]
    folder, name = wf.path.rsplit("/", 1)
    # no md5: the checksum belongs to the released file
    return W.WeightFile(key=PREFIX + key, path=f"{folder}/{PREFIX}{name}")


def _server_spec(spec: V.VariantSpec) -> V.VariantSpec:
    renamed = {f: PREFIX + getattr(spec, f) for f in _FILE_FIELDS if getattr(spec, f)}
    return dataclasses.replace(spec, **renamed)


def _originals() -> dict[str, V.VariantSpec]:
    return {"tiny_16k": tiny.TINY_16K, "tiny_44k": tiny.TINY_44K}


def register() -> None:
    """Add the tiny variants (and their files) to the pack's tables; idempotent."""
    for spec in _originals().values():
        for f in _FILE_FIELDS:
            key = getattr(spec, f)
            if key:
                W.FILES.setdefault(PREFIX + key, _own_file(key))
        V.VARIANTS.setdefault(spec.name, _server_spec(spec))


def write_models_dir(tiny_models: Path, root: Path) -> Path:
    """A copy of the tiny models folder (``tiny.make_models_dir``) under the server's file names."""
    root.mkdir(parents=True, exist_ok=True)
    for spec in _originals().values():
        for f in _FILE_FIELDS:
            key = getattr(spec, f)
            if not key:
                continue
            dst = root / _own_file(key).path
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tiny_models / W.FILES[key].path, dst)
    if not (root / "hf").exists():
        shutil.copytree(tiny_models / "hf", root / "hf")
    return root
