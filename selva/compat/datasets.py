"""The earlier pack's datasets: its ``dataset.json`` array and its feature ``.npz`` files.

``dataset.json`` there is a JSON array of ``{"path": <base path, no extension>, "label": ...}``:
the video is ``<path>.mp4``, the frames ``<path>/``, the audio and features
``<dir>/features/<name>.wav|.flac|.npz``. :func:`read_earlier_index` gives its entries in our index's fields.

Its feature files hold ``clip_features`` (1, N, 1024), ``sync_features`` (1, S, 768) made by the
TextSynchformer for the stored ``prompt``, ``duration`` and ``variant``, but no text features and
no frames: its trainer computed the CLIP text features of the training prompt at load and used
the stored sync features as they were. :func:`earlier_clip_features` does the same, computing the
text features from the training prompt (T5 and CLIP) once and keeping the result beside the
dataset (``.selva_cache/earlier_features``, keyed by the file's content, the prompt and the
encoders), so later runs skip the text encoders. The sync features cannot be re-encoded for
another prompt (no frames are stored); a use that needs that is refused by name.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import SelvaError
from ..features import Features, content_hash

log = logging.getLogger(__name__)

EARLIER_KEYS = ("clip_features", "sync_features", "prompt", "duration", "variant")
CACHE_SUBDIR = Path(".selva_cache") / "earlier_features"
SYNC_FPS = 25.0  # the earlier files keep no source frame rate; the sync stream's rate stands in
REEXTRACT = ("extract them again with this pack: `python -m selva prepare-dataset --videos <the "
             "source videos> --out <dataset folder>` or the SelVA Feature Extractor (name input, "
             "cache_dir = the dataset folder)")


def _read(path: Path) -> Optional[dict[str, Any]]:
    """The entries of an ``.npz`` written by the earlier Feature Extractor (no header, clip and
    sync features), or None for any other file."""
    try:
        data = np.load(path, allow_pickle=False)
        names = set(data.files)
    except Exception:
        return None
    with data:
        if "header" in names or not {"clip_features", "sync_features"} <= names:
            return None
        missing = [k for k in EARLIER_KEYS if k not in names]
        if missing:
            raise SelvaError(f"{path.name} is an earlier-pack features file without "
                             f"{', '.join(missing)}; {REEXTRACT}.")
        try:
            return {"clip_features": torch.from_numpy(np.array(data["clip_features"])).float(),
                    "sync_features": torch.from_numpy(np.array(data["sync_features"])).float(),
                    "prompt": str(data["prompt"]), "duration": float(data["duration"]),
                    "variant": str(data["variant"])}
        except Exception as e:
            raise SelvaError(f"{path.name} is not a readable features file ({e}); {REEXTRACT}.") from e


def earlier_clip_features(pipe, path: Path, prompt: Optional[str], fallback_prompt: str,
                          hooks=None) -> Optional[Features]:
    """Our :class:`Features` for an earlier-pack ``.npz`` trained with ``prompt`` (None: its stored
    prompt, or ``fallback_prompt`` when that is empty), or None when ``path`` is not such a file
    (then today's reader reads it)."""
    path = Path(path)
    data = _read(path)
    if data is None:
        return None
    variant = pipe.variant.name
    if data["variant"] != variant:
        raise SelvaError(f"{path.name} holds features of variant {data['variant']!r}, but the model is "
                         f"{variant!r}: load the {data['variant']} model, or {REEXTRACT}.")
    clip_f, sync_f = data["clip_features"], data["sync_features"]
    if clip_f.dim() != 3 or sync_f.dim() != 3 or clip_f.shape[0] != 1 or sync_f.shape[0] != 1:
        raise SelvaError(f"{path.name}: clip/sync features of shapes {tuple(clip_f.shape)} / "
                         f"{tuple(sync_f.shape)} are not (1, N, D); {REEXTRACT}.")
    prompt = prompt if prompt is not None else (data["prompt"] or fallback_prompt)
    digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    key = content_hash(["earlier features", 1, variant, *pipe.encoding.keys.identity(), digest, prompt])
    cached = path.parent / CACHE_SUBDIR / f"{key}.npz"
    if cached.is_file():
        try:
            return Features.load(cached)
        except SelvaError as e:  # a broken cache entry only costs encoding the text again
            log.warning("Ignoring %s (%s)", cached, e)
    log.info("%s: earlier-pack features; encoding the text of %r", path.name, prompt)
    from ..hooks import or_default

    text = pipe.encoding.encode_text(prompt, or_default(hooks))
    features = Features(
        variant=variant, prompt=prompt, duration=data["duration"], fps=SYNC_FPS,
        text_t5=text.t5.float().cpu(), text_t5_mask=text.t5_mask.cpu(), text_clip=text.clip.float().cpu(),
        sync_features=sync_f, sync_frames_u8=torch.zeros(0, 224, 224, 3, dtype=torch.uint8),
        clip_features=clip_f)
    try:
        features.save(cached)
    except OSError as e:
        log.warning("Could not keep the encoded text in %s (%s); continuing without.", cached, e)
    return features


def read_earlier_index(path: Path) -> Optional[list[dict]]:
    """The earlier ``dataset.json`` array as the fields of our index's clip entries
    (``selva.datasets.folder.ClipEntry``), or None for any other file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # today's reader reports what is wrong
    if not isinstance(data, list):
        return None
    clips = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not str(entry.get("path", "")).strip():
            raise SelvaError(f"{path}: entry {i} has no \"path\" (the earlier dataset.json holds "
                             f"{{\"path\": <clip base path>, \"label\": <prompt>}} entries).")
        base = Path(str(entry["path"]).strip())
        features = base.parent / "features" / base.name
        audio = features.with_suffix(".wav")
        if not audio.is_file() and features.with_suffix(".flac").is_file():
            audio = features.with_suffix(".flac")
        clips.append(dict(id=base.name, video=str(base) + ".mp4", audio=str(audio),
                          features=str(features.with_suffix(".npz")), frames_dir=str(base),
                          label=str(entry.get("label", "")), duration=0.0, start=0.0))
    if not clips:
        raise SelvaError(f"{path} is an empty dataset list.")
    return clips
