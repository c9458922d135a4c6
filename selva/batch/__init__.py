"""Batch generation: every row of a folder or manifest through one loaded pipeline.

    rows = rows_from_manifest(Path("clips.csv"), RowDefaults(prompt="rain"))
    results = run_batch(pipe, rows, BatchOptions(out_dir=Path("out")))

``rows`` reads folders and manifests, ``runner`` runs rows (skip, resume, failures, a background
reader), ``grouped`` samples rows of one length together, ``cli`` is ``python -m selva batch``
(under torchrun it deals rows out with :mod:`selva.distributed`).
"""
from .results import RESULTS_NAME, RowResult, read_results, summary_line
from .rows import MANIFEST_COLUMNS, VIDEO_EXTENSIONS, Row, RowDefaults, rows_from_folder, rows_from_manifest
from .runner import AUDIO_FORMATS, BatchOptions, outputs_for, run_batch

__all__ = ["AUDIO_FORMATS", "BatchOptions", "MANIFEST_COLUMNS", "RESULTS_NAME", "Row", "RowDefaults",
           "RowResult", "VIDEO_EXTENSIONS", "outputs_for", "read_results", "rows_from_folder",
           "rows_from_manifest", "run_batch", "summary_line"]
