"""``python tests/tiny_cli.py <command> ...``: the real CLI with the tiny test variants known
(for subprocess tests, e.g. under torchrun)."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
pack = types.ModuleType("comfyui_selva")
pack.__path__ = [str(HERE.parent)]
pack.__spec__ = importlib.util.spec_from_loader("comfyui_selva", loader=None, is_package=True)
pack.__spec__.submodule_search_locations = [str(HERE.parent)]
sys.modules["comfyui_selva"] = pack

import torch  # noqa: E402

import tiny  # noqa: E402
from comfyui_selva.selva.cli import main  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    tiny.register_tiny_variants()
    raise SystemExit(main(sys.argv[1:]))
