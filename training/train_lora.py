"""Train a LoRA for the SelVA generator: ``python training/train_lora.py --data_dir DIR ...``.

The same command as ``python -m selva train-lora``; ``--help`` lists every option. Data-parallel
on several GPUs: ``torchrun --nproc_per_node N training/train_lora.py ...``. See LORA_TRAINING.md.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _entry import run  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(run("train-lora"))
