"""Vocoder sweeps: several BigVGAN tuning runs from one experiments file (the SelVA BigVGAN
Scheduler's core), each audio folder decoded once.

Two layouts of the file are read:

* this pack's sweep layout, as for LoRA sweeps::

    {"base": {"data_dir": "my_sounds", "steps": 2000}, "experiments": [{"name": "phase", "lambda_phase": 1}]}

* the earlier SelVA pack's layout: top-level ``name``, ``description``, ``data_dir`` and
  ``output_root``; experiments named by ``id`` with an optional ``description``/``group``. A file
  in that layout gets that pack's defaults for what it leaves out (segment_seconds 2.0, GAFilters
  on with 9 taps, lambda_phase 1.0, seed 42), so it runs as it ran there.

Each experiment = defaults, then ``base``, then its overrides; its keys are the BigVGAN
Trainer's settings plus ``data_dir`` and ``discriminator_path``. The sweep folder is the file's
``output_root``, else ``<output_dir>/<file stem>``; the per-experiment loop (resume, skip,
failures, the summary with its ``vocoders`` list) is the LoRA sweep's, :mod:`..train.sweep_runner`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import SelvaError
from ..hooks import Hooks, or_default
from ..train.options import settings_of
from ..train.sweep_runner import (DONE, SweepEntry, SweepKind, SweepResult, check_experiment, open_summary,
                                  read_sweep_file, run_entries)
from .tuner import VocoderTuningConfig

log = logging.getLogger(__name__)

# What the earlier pack's BigVGAN Scheduler used for a key its file left out.
EARLIER_DEFAULTS = {"segment_seconds": 2.0, "use_gafilter": True, "gafilter_kernel_size": 9,
                    "lambda_phase": 1.0, "seed": 42}
PATH_KEYS = ("data_dir", "discriminator_path")


@dataclass
class VocoderSweepFile:
    experiments: list[SweepEntry]  # settings: defaults + base + overrides
    name: str
    description: str = ""
    output_root: Optional[str] = None


def read_vocoder_sweep(path: Path) -> VocoderSweepFile:
    """The experiments of a vocoder sweep file (either layout), validated; clear errors."""
    path, data, base = read_sweep_file(path, "BigVGAN Trainer settings")
    earlier = any(isinstance(e, dict) and "id" in e and "name" not in e for e in data["experiments"])
    defaults = dict(EARLIER_DEFAULTS) if earlier else {}
    if data.get("data_dir"):
        defaults["data_dir"] = data["data_dir"]
    known = set(settings_of(VocoderTuningConfig)) | set(PATH_KEYS)
    out, seen = [], set()
    for i, entry in enumerate(data["experiments"], 1):
        if not isinstance(entry, dict):
            raise SelvaError(f"{path}: experiment {i} must be an object.")
        name = str(entry.get("name", entry.get("id", ""))).strip()
        if not name:
            raise SelvaError(f"{path}: experiment {i} needs a \"name\" (or \"id\").")
        overrides = {k: v for k, v in entry.items() if k not in ("name", "id", "description", "group")}
        settings = {**defaults, **base, **overrides}
        check_experiment(path, name, settings, known, seen, "at the top or in base")
        group = str(entry.get("group", ""))
        # a group only when the file gives one, as the LoRA sweep records it
        out.append(SweepEntry(name, settings, {"description": str(entry.get("description", "")),
                                               **({"group": group} if group else {})}))
    return VocoderSweepFile(out, str(data.get("name") or path.stem), str(data.get("description", "")),
                            data.get("output_root") or None)


def run_vocoder_sweep(pipe, experiments_file: Path, output_dir: Path, *, hooks: Optional[Hooks] = None,
                      resolve: Callable[[str], Path] = lambda p: Path(p).expanduser(),
                      on_step: Optional[Callable] = None) -> SweepResult:
    """Run every experiment not already done; see the module docstring. ``resolve`` turns the
    file's paths (data_dir, discriminator_path, output_root) into folders (a node resolves
    relative ones inside ComfyUI's output folder)."""
    from .tuner import tune_vocoder

    hooks = or_default(hooks)
    sweep = read_vocoder_sweep(experiments_file)
    sweep_dir = resolve(sweep.output_root) if sweep.output_root else Path(output_dir) / Path(experiments_file).stem
    sweep_dir.mkdir(parents=True, exist_ok=True)
    summary = open_summary(sweep_dir, {"experiments_file": str(experiments_file), "name": sweep.name,
                                       "description": sweep.description}, kind="vocoder")
    audio_cache: dict = {}  # each audio folder decoded once for every experiment

    def prepare(entry: SweepEntry, resume: Optional[Path]):
        settings = dict(entry.settings)
        disc = str(settings.pop("discriminator_path", "") or "").strip()
        cfg = VocoderTuningConfig(data_dir=resolve(str(settings.pop("data_dir"))), output_path=sweep_dir,
                                  discriminator_path=resolve(disc) if disc else None, resume=resume,
                                  **settings).validate()

        def run(run_dir: Path, should_stop: Callable[[], bool]):
            path, result = tune_vocoder(pipe, cfg, hooks, on_step=on_step, run_dir=run_dir,
                                        should_stop=should_stop, audio_cache=audio_cache)
            return result, str(path)
        return run

    def listing(runs: dict[str, dict]) -> list:
        return [{"name": k, "path": r["vocoder"]} for k, r in runs.items()
                if r.get("status") in DONE and r.get("vocoder")]

    kind = SweepKind("Vocoder sweep", "vocoder", "vocoders", listing, prepare, title=f"vocoder sweep {sweep.name}")
    return run_entries(sweep_dir, summary, sweep.experiments, kind, hooks)
