"""State dicts built from the released files' manifest (keys, shapes, dtypes, structure).

``tests/data/checkpoint_manifest.json`` is derived from the project's checkpoint manifest. Keys
in it are written ``top/inner.key`` when the file holds a dict of state dicts (``best_netG.pt``
is ``{"generator": state_dict}``).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

MANIFEST_PATH = Path(__file__).resolve().parent / "data" / "checkpoint_manifest.json"


@lru_cache(maxsize=None)
def manifest() -> dict:
    return json.loads(MANIFEST_PATH.read_text())


def file_entry(path: str) -> dict:
    files = manifest()["files"]
    if path not in files:
        raise KeyError(f"{path} not in manifest; known: {sorted(files)}")
    return files[path]


def state_dict_for(path: str, device: str = "meta", fill: str = "randn") -> dict:
    """The object ``torch.load`` would return for ``path``, with tensors of the listed shapes.

    ``device="meta"`` costs no memory (for strict-loading full-size networks on the meta device);
    ``device="cpu"`` fills real values (``randn`` or ``ones``).
    """
    entry = file_entry(path)
    nested = entry["structure"]["type"] == "dict"
    out: dict = {}
    for key, shape, dtype in entry["tensors"]:
        dt = getattr(torch, dtype)
        if device == "meta":
            t = torch.empty(shape, dtype=dt, device="meta")
        elif fill == "ones":
            t = torch.ones(shape, dtype=dt)
        else:
            t = torch.randn(shape).to(dt)
        if nested:
            top, inner = key.split("/", 1)
            out.setdefault(top, {})[inner] = t
        else:
            out[key] = t
    return out


def keys_and_shapes(path: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(s) for k, s, _ in file_entry(path)["tensors"]}
