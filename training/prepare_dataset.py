"""Make a training dataset from a folder of videos: ``python training/prepare_dataset.py
--videos DIR --out DATASET --prompt "..."`` (or ``--csv``, ``--captions``). Same as
``python -m selva prepare-dataset``; see LORA_TRAINING.md."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _entry import run  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(run("prepare-dataset"))
