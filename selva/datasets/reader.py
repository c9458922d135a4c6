"""The one dataset reader: which clips a dataset folder holds, with their audio and prompt.

    my_sounds/
        prompts.txt          optional, lines "door_001.npz: a wooden door creaks"
        door_001.npz         from the Feature Extractor (name input) or prepare-dataset
        door_001.wav         the clean target audio: any rate, channels, format
        door_001.txt         optional caption
        dataset.json         optional index (prepare-dataset); not needed to read the clips
        .selva_cache/        hidden caches (content-keyed features, VAE latents): never read

Only the folder's own, visible ``.npz`` files are clips: hidden files and folders (the content
cache holds copies of named clips) are skipped, so a clip never counts twice.

:func:`read_dataset` is the single entry point every trainer, textual inversion, the steering
extractor and the report call.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import SelvaError
from ..train.audio_files import AUDIO_EXTENSIONS

log = logging.getLogger(__name__)

PROMPTS_FILE = "prompts.txt"


@dataclass(frozen=True)
class ClipFiles:
    stem: str
    features_path: Path
    audio_path: Optional[Path]  # None only when read with need_audio=False
    caption: Optional[str]  # from prompts.txt or the .txt caption; None = use the .npz prompt
    caption_source: str  # "prompts.txt" | "caption" | "features" (resolved later)


def read_prompts_file(path: Path) -> dict[str, str]:
    """``clip.npz: prompt`` lines (the stem alone works too; blank lines and # comments skipped)."""
    prompts = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, prompt = line.partition(":")
        if not sep or not name.strip():
            raise SelvaError(f"{path}, line {number}: expected 'clip.npz: prompt', got {line!r}.")
        prompts[Path(name.strip()).stem] = prompt.strip()
    return prompts


def audio_beside(path: Path) -> Optional[Path]:
    """The same-stem audio file beside ``path`` (any known extension, either case)."""
    for ext in AUDIO_EXTENSIONS:
        for candidate in (path.with_suffix(ext), path.with_suffix(ext.upper())):
            if candidate.is_file():
                return candidate
    return None


def read_dataset(data_dir: Path, *, need_audio: bool = True) -> list[ClipFiles]:
    """Every clip of the dataset folder, sorted by name; clear errors for what is missing.

    ``need_audio=False`` (steering vectors, which only use the features) lists clips without an
    audio file too."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise SelvaError(f"The dataset folder {data_dir} does not exist. Point data_dir at a folder "
                         f"of features .npz files with same-name audio files.")
    npzs = sorted(p for p in data_dir.glob("*.npz") if not p.name.startswith(".") and p.is_file())
    if not npzs:
        raise SelvaError(f"No clips found in {data_dir}: it holds no .npz features files. Make them "
                         f"with SelVA Dataset From Folder, the Feature Extractor (name input) or "
                         f"python -m selva prepare-dataset.")
    prompts_path = data_dir / PROMPTS_FILE
    prompts = read_prompts_file(prompts_path) if prompts_path.is_file() else {}
    unknown = sorted(set(prompts) - {p.stem for p in npzs})
    if unknown:
        log.warning("%s names clips that do not exist: %s", prompts_path, ", ".join(unknown[:5]))
    clips, missing = [], []
    for npz in npzs:
        audio = audio_beside(npz)
        if audio is None and need_audio:
            missing.append(npz.name)
            continue
        caption, source = None, "features"
        txt = npz.with_suffix(".txt")
        if npz.stem in prompts:
            caption, source = prompts[npz.stem], PROMPTS_FILE
        elif txt.is_file() and txt.read_text(encoding="utf-8").strip():
            caption, source = txt.read_text(encoding="utf-8").strip(), "caption"
        clips.append(ClipFiles(npz.stem, npz, audio, caption, source))
    if missing:
        raise SelvaError(f"{len(missing)} clip(s) in {data_dir} have no audio file with the same name: "
                         f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}. Put e.g. "
                         f"{Path(missing[0]).stem}.wav beside it (any of {', '.join(AUDIO_EXTENSIONS)}) "
                         f"or remove the .npz.")
    return clips


find_clips = read_dataset  # the name the trainers used before
