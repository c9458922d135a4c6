"""The networks the metrics run, where their released files come from, and where they live.

Synchformer is SelVA's own ``ext_weights/synchformer_state_dict.pth`` (shared with generation).
PaSST is published on GitHub (kkoutini/PaSST releases), the LAION-CLAP checkpoint on Hugging Face
(``lukewys/laion_clap``); both are kept under ``<models dir>/evaluation/``. CLAP's text side also
needs roberta-base's tokenizer files (``FacebookAI/roberta-base``: vocab.json and merges.txt),
kept like SelVA's other Hugging Face files under ``<models dir>/hf/`` or found in the HF cache. Missing files are downloaded on first use unless downloads are off
(``--offline`` / ``HF_HUB_OFFLINE=1``); then one error lists every missing file and where to put it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from .. import weights as selva_weights
from ..errors import SelvaError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalWeight:
    key: str
    path: str  # relative to the models directory
    url: str
    size_bytes: Optional[int]
    hf_repo: Optional[str] = None  # published on Hugging Face: fetched with huggingface_hub


PASST = EvalWeight("passt", "evaluation/passt-s-f128-p16-s10-ap.476-swa.pt",
                   "https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/"
                   "passt-s-f128-p16-s10-ap.476-swa.pt", 346_000_000)
CLAP = EvalWeight("clap", "evaluation/music_speech_audioset_epoch_15_esc_89.98.pt",
                  selva_weights.HF_URL.format(repo="lukewys/laion_clap",
                                              path="music_speech_audioset_epoch_15_esc_89.98.pt"),
                  None, hf_repo="lukewys/laion_clap")
# roberta-base's byte-level BPE files (the slow and fast RoBERTa tokenizers both build from them)
ROBERTA_TOKENIZER = selva_weights.HubSnapshot("roberta_tokenizer", "FacebookAI/roberta-base",
                                              ("vocab.json", "merges.txt"))

# which weights each metric needs ("synchformer" is SelVA's own file)
METRIC_WEIGHTS = {"desync": ("synchformer",), "clap": ("clap", "roberta_tokenizer"), "fd": ("passt",),
                  "kl": ("passt",), "spectral": ()}
EVAL_FILES = {PASST.key: PASST, CLAP.key: CLAP}
EVAL_SNAPSHOTS = {ROBERTA_TOKENIZER.key: ROBERTA_TOKENIZER}


def _download(ew: EvalWeight, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("Downloading %s to %s", ew.url, dest)
    if ew.hf_repo is not None:
        from huggingface_hub import hf_hub_download

        # resumable, into the folder the file is kept in (its name is the repository's)
        hf_hub_download(ew.hf_repo, Path(ew.path).name, local_dir=dest.parent)
        return
    from torch.hub import download_url_to_file

    download_url_to_file(ew.url, str(dest), progress=True)  # writes a temp file, then renames


def _missing_line(key: str, models_dir: Path) -> str:
    if key in EVAL_SNAPSHOTS:
        snap = EVAL_SNAPSHOTS[key]
        return selva_weights._missing_line_snapshot(snap, Path(models_dir) / "hf" / snap.local_name)
    wf = selva_weights.FILES.get(key) or EVAL_FILES[key]
    return f"- {wf.path}: download {wf.url} and save it as {Path(models_dir) / wf.path}"


def resolve_metric_weights(metrics: Iterable[str], models_dir: Path, *,
                           allow_download: bool = True) -> dict[str, Path]:
    """Paths of every file the metrics need, downloading what is missing (or one error listing all)."""
    keys = sorted({k for m in metrics for k in METRIC_WEIGHTS.get(m, ())})
    found: dict[str, Path] = {}
    missing: list[str] = []
    offline = not allow_download or selva_weights.downloads_disabled()
    for key in keys:
        if key in selva_weights.FILES:
            wf = selva_weights.FILES[key]
            path = selva_weights.local_path(wf, models_dir)
            if path is None and not offline:
                try:
                    path = selva_weights.resolve_file(wf, models_dir)
                except SelvaError as e:
                    log.warning("%s", e)
        elif key in EVAL_SNAPSHOTS:
            try:
                path = selva_weights.resolve_snapshot(EVAL_SNAPSHOTS[key], models_dir,
                                                      allow_download=not offline)
            except SelvaError as e:
                if not offline:
                    log.warning("%s", e)
                path = None
        else:
            ew = EVAL_FILES[key]
            path = Path(models_dir) / ew.path
            if not path.is_file():
                if offline:
                    path = None
                else:
                    try:
                        _download(ew, path)
                    except Exception as e:  # network errors of every kind end in the list below
                        log.warning("Downloading %s failed: %s", ew.url, e)
                        path = None
        if path is None:
            missing.append(_missing_line(key, models_dir))
        else:
            found[key] = path
    if missing:
        why = "downloads are turned off" if offline else "the download failed"
        raise selva_weights.MissingWeightsError(
            "The evaluation networks are missing and " + why + ". Get them by hand:\n" + "\n".join(missing))
    return found
