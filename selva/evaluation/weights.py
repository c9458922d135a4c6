"""The networks the metrics run, where their released files come from, and where they live.

Synchformer is SelVA's own ``ext_weights/synchformer_state_dict.pth`` (shared with generation).
PaSST is published on GitHub (kkoutini/PaSST releases) and is kept under
``<models dir>/evaluation/``. Missing files are downloaded on first use unless downloads are off
(``--offline`` / ``HF_HUB_OFFLINE=1``); then one error lists every missing file and where to put it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .. import weights as selva_weights
from ..errors import SelvaError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalWeight:
    key: str
    path: str  # relative to the models directory
    url: str
    size_bytes: int


PASST = EvalWeight("passt", "evaluation/passt-s-f128-p16-s10-ap.476-swa.pt",
                   "https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/"
                   "passt-s-f128-p16-s10-ap.476-swa.pt", 346_000_000)

# which weights each metric needs ("synchformer" is SelVA's own file)
METRIC_WEIGHTS = {"desync": ("synchformer",), "fd": ("passt",), "kl": ("passt",), "spectral": ()}
EVAL_FILES = {PASST.key: PASST}


def _download(url: str, dest: Path) -> None:
    from torch.hub import download_url_to_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("Downloading %s to %s", url, dest)
    download_url_to_file(url, str(dest), progress=True)  # writes a temp file, then renames


def _missing_line(key: str, models_dir: Path) -> str:
    if key in selva_weights.FILES:
        wf = selva_weights.FILES[key]
        return f"- {wf.path}: download {wf.url} and save it as {Path(models_dir) / wf.path}"
    ew = EVAL_FILES[key]
    return f"- {ew.path}: download {ew.url} and save it as {Path(models_dir) / ew.path}"


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
        else:
            ew = EVAL_FILES[key]
            path = Path(models_dir) / ew.path
            if not path.is_file():
                if offline:
                    path = None
                else:
                    try:
                        _download(ew.url, path)
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
