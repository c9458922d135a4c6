"""``training/prepare_dataset.py`` / ``python -m selva prepare-dataset``: the command line of
:mod:`selva.datasets.folder` (a folder of videos -> a training dataset)."""
from __future__ import annotations

from ..datasets.cli import add_prepare_arguments as add_arguments  # noqa: F401
from ..datasets.cli import run_prepare as run_from_args  # noqa: F401
from ..datasets.folder import (INDEX_FORMAT, INDEX_NAME, INDEX_VERSION, MIN_TAIL_SECONDS,  # noqa: F401
                               VIDEO_EXTENSIONS, ClipEntry, DatasetIndex, PrepareOptions, clip_spans,
                               prepare_dataset, read_index, read_prompt_csv, video_duration)
