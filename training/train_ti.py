"""Train textual-inversion tokens for SelVA: ``python training/train_ti.py --data_dir DIR --output_dir OUT``.

The same command as ``python -m selva train-ti``; ``--help`` lists every option. See STYLE_TRANSFER.md.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _entry import run  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(run("train-ti"))
