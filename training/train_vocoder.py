#!/usr/bin/env python
"""Fine-tune SelVA's BigVGAN vocoder from the command line.

    python training/train_vocoder.py --data-dir my_sounds --output runs --variant small_16k

Same core, inputs and run folders as the SelVA BigVGAN Trainer node; ``--help`` lists the options.
"""
import sys
from pathlib import Path

# the pack's core packages (selva/, bigvgan/) are imported as top-level packages from the repository root
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selva.vocoder_tuning.command import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
