"""Every weight file SelVA uses: where it comes from, where it lives, how it is checked and loaded.

Two kinds of weights:

* single checkpoint files from ``jnwnlee/SelVA`` (video encoder, generators, VAEs, the 16 kHz
  BigVGAN, Synchformer), kept under a models directory in the same layout as the official
  repository (``weights/...``, ``ext_weights/...``);
* Hugging Face snapshots used through their libraries (CLIP, T5, the 44.1 kHz BigVGAN v2), kept
  under ``<models dir>/hf/<org>--<name>/`` or found in the ordinary Hugging Face cache.

Missing files are downloaded with ``huggingface_hub`` (resumable, with a progress bar) unless
downloads are off; then the error lists every missing file, its URL and where to put it.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from . import artifacts
from .errors import SelvaError

log = logging.getLogger(__name__)

SELVA_REPO = "jnwnlee/SelVA"
HF_URL = "https://huggingface.co/{repo}/resolve/main/{path}"
MIB = 1024 * 1024


@dataclass(frozen=True)
class WeightFile:
    """One checkpoint file of the SelVA release."""

    key: str
    path: str  # relative to the models directory, and to the root of ``repo_id``
    md5: Optional[str] = None
    size_bytes: Optional[int] = None  # fp32 tensor bytes (about the file size), for tables
    alternative_paths: tuple[str, ...] = ()  # other names the same file is published under
    repo_id: str = SELVA_REPO

    @property
    def url(self) -> str:
        return HF_URL.format(repo=self.repo_id, path=self.path)


@dataclass(frozen=True)
class HubSnapshot:
    """A Hugging Face repository used through its own library (only ``files`` are fetched)."""

    key: str
    repo_id: str
    files: tuple[str, ...]
    size_bytes: Optional[int] = None

    @property
    def local_name(self) -> str:
        return self.repo_id.replace("/", "--")


def _generator(size: str, rate: str, size_bytes: Optional[int] = None,
               md5: Optional[str] = None) -> WeightFile:
    # The 44.1 kHz generators may be published as ``generator_<size>_44khz_sup_5.pth``.
    alt = (f"weights/generator_{size}_44khz_sup_5.pth",) if rate == "44k" else ()
    return WeightFile(key=f"generator_{size}_{rate}", path=f"weights/generator_{size}_{rate}_sup_5.pth",
                      md5=md5, size_bytes=size_bytes, alternative_paths=alt)


FILES: dict[str, WeightFile] = {f.key: f for f in (
    WeightFile("video_enc", "weights/video_enc_sup_5.pth", "ff09a6dc36148536ee4db97eba081d05", 539_354_624),
    _generator("small", "16k", 629_134_576, "1cb0f0deec52de37f67b1fd9965337d0"),
    _generator("small", "44k", 629_636_576),
    _generator("medium", "44k", 2_487_223_776),
    _generator("large", "44k", 4_120_008_672),
    WeightFile("vae_16k", "ext_weights/v1-16.pth", "69f56803f59a549a1a507c93859fd4d7", 686_629_512),
    WeightFile("vae_44k", "ext_weights/v1-44.pth", "fab020275fa44c6589820ce025191600", 1_221_919_752),
    WeightFile("bigvgan_16k", "ext_weights/best_netG.pt", "eeaf372a38a9c31c362120aba2dde292", 448_935_464),
    WeightFile("synchformer", "ext_weights/synchformer_state_dict.pth",
               "5b2f5594b0730f70e41e549b7c94390c", 949_840_980),
)}

HUB: dict[str, HubSnapshot] = {s.key: s for s in (
    HubSnapshot("clip", "apple/DFN5B-CLIP-ViT-H-14-384",
                ("open_clip_config.json", "open_clip_pytorch_model.bin"), 3_946_859_524),
    HubSnapshot("t5", "google/flan-t5-base",
                # the fast tokenizer reads tokenizer.json; spiece.model is not needed
                ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"), 990_345_064),
    HubSnapshot("bigvgan_v2_44k", "nvidia/bigvgan_v2_44khz_128band_512x",
                ("config.json", "bigvgan_generator.pt"), 488_988_403),
)}


class MissingWeightsError(SelvaError):
    """Weights are absent and could not be downloaded."""


def default_models_dir() -> Path:
    """``$SELVA_MODELS_DIR``, else ``./models/selva`` (ComfyUI passes its own folder)."""
    env = os.environ.get("SELVA_MODELS_DIR")
    return Path(env).expanduser() if env else Path("models") / "selva"


def downloads_disabled() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


# --------------------------------------------------------------------------- single files
def local_path(wf: WeightFile, models_dir: Path) -> Optional[Path]:
    """The file in ``models_dir`` under its name or one of its alternative names, if present."""
    for rel in (wf.path, *wf.alternative_paths):
        p = Path(models_dir) / rel
        if p.is_file():
            return p
    return None


def md5sum(path: Path, chunk: int = 16 * MIB) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_download(wf: WeightFile, path: Path) -> None:
    """Check a fresh download against its published md5 (when known). A mismatch is set aside as
    ``<name>.md5-mismatch`` (so that the next run fetches the file again) and raises SelvaError."""
    if wf.md5 is None:
        return
    got = md5sum(path)
    if got != wf.md5:
        aside = path.with_name(path.name + ".md5-mismatch")
        os.replace(path, aside)
        raise SelvaError(
            f"The download of {wf.path} does not match the published checksum (md5 {got}, expected "
            f"{wf.md5}): it is incomplete or a different file. It was set aside as {aside}; run "
            f"again to download it afresh, or get it from {wf.url}.")


def _download_file(wf: WeightFile, models_dir: Path) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    last: Optional[Exception] = None
    for rel in (wf.path, *wf.alternative_paths):
        try:
            log.info("Downloading %s from %s", rel, wf.repo_id)
            got = Path(hf_hub_download(wf.repo_id, rel, local_dir=models_dir))
        except LocalEntryNotFoundError:  # the Hub could not be reached: a failed download
            raise
        except EntryNotFoundError as e:  # try the next published name
            last = e
            continue
        _check_download(wf, got)
        return got
    tried = ", ".join((wf.path, *wf.alternative_paths))
    raise missing_error([_missing_line_file(wf, models_dir)],
                        cause=SelvaError(f"{wf.repo_id} has none of {tried}: {last}"))


def resolve_file(wf: WeightFile, models_dir: Path, *, allow_download: bool = True) -> Path:
    """Path of ``wf`` in ``models_dir``, downloading it first if needed and allowed."""
    found = local_path(wf, models_dir)
    if found is not None:
        return found
    if not allow_download or downloads_disabled():
        raise missing_error([_missing_line_file(wf, models_dir)])
    try:
        return _download_file(wf, Path(models_dir))
    except SelvaError:
        raise
    except Exception as e:  # network down, proxy, permissions: say what to do by hand
        raise missing_error([_missing_line_file(wf, models_dir)], cause=e) from e


# ------------------------------------------------------------------------- hub snapshots
def _snapshot_complete(directory: Path, snap: HubSnapshot) -> bool:
    return all((directory / f).is_file() for f in snap.files)


def _cached_snapshot(snap: HubSnapshot) -> Optional[Path]:
    """The snapshot in the ordinary Hugging Face cache, if every needed file is there."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(snap.repo_id, allow_patterns=list(snap.files),
                                      local_files_only=True))
    except Exception:  # not cached (huggingface_hub raises several kinds here)
        return None
    return path if _snapshot_complete(path, snap) else None


def resolve_snapshot(snap: HubSnapshot, models_dir: Path, *, allow_download: bool = True) -> Path:
    """A directory holding ``snap.files``: ``<models>/hf/<org>--<name>``, the HF cache, or a download."""
    local = Path(models_dir) / "hf" / snap.local_name
    if _snapshot_complete(local, snap):
        return local
    cached = _cached_snapshot(snap)
    if cached is not None:
        return cached
    if not allow_download or downloads_disabled():
        raise missing_error([_missing_line_snapshot(snap, local)])
    from huggingface_hub import snapshot_download

    try:
        log.info("Downloading %s (%s)", snap.repo_id, ", ".join(snap.files))
        snapshot_download(snap.repo_id, allow_patterns=list(snap.files), local_dir=local)
    except Exception as e:
        raise missing_error([_missing_line_snapshot(snap, local)], cause=e) from e
    if not _snapshot_complete(local, snap):
        raise missing_error([_missing_line_snapshot(snap, local)])
    return local


# --------------------------------------------------------------------------------- errors
def _missing_line_file(wf: WeightFile, models_dir: Path) -> str:
    return f"- {wf.path}: download {wf.url} and save it as {Path(models_dir) / wf.path}"


def _missing_line_snapshot(snap: HubSnapshot, local: Path) -> str:
    urls = ", ".join(HF_URL.format(repo=snap.repo_id, path=f) for f in snap.files)
    return f"- {snap.repo_id}: put {', '.join(snap.files)} into {local} (from {urls})"


def missing_error(lines: Iterable[str], cause: Optional[Exception] = None) -> MissingWeightsError:
    why = ("downloads are turned off (HF_HUB_OFFLINE is set)" if downloads_disabled()
           else f"the download failed ({cause})" if cause is not None
           else "downloads are turned off")
    return MissingWeightsError("SelVA weights are missing and " + why + ". Get them by hand:\n"
                               + "\n".join(lines))


def check_available(files: Iterable[WeightFile], snapshots: Iterable[HubSnapshot],
                    models_dir: Path) -> list[str]:
    """Lines describing every file that is neither in ``models_dir`` nor in the HF cache."""
    lines = [_missing_line_file(wf, models_dir) for wf in files if local_path(wf, models_dir) is None]
    for snap in snapshots:
        local = Path(models_dir) / "hf" / snap.local_name
        if not _snapshot_complete(local, snap) and _cached_snapshot(snap) is None:
            lines.append(_missing_line_snapshot(snap, local))
    return lines


# -------------------------------------------------------------------------------- loading
def load_checkpoint(path: Path) -> Any:
    """A released checkpoint, memory-mapped and read weights-only (:func:`artifacts.read_pt`);
    a missing or unreadable file is a SelvaError naming it, with what to do."""
    path = Path(path)
    if not path.is_file():
        raise SelvaError(f"Checkpoint not found: {path}. Download it again or check the path.")
    return artifacts.read_pt(path, "checkpoint", mmap=True,
                             fix="the file is probably truncated or corrupt (an interrupted download?): "
                                 "delete it and run again to download it afresh")