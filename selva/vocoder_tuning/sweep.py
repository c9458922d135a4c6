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
``output_root``, else ``<output_dir>/<file stem>``; each run tunes into a fresh ``<name>_NNN``
inside it. ``experiment_summary.json`` (the LoRA sweep's format: per run its settings, status,
losses, tuned file and error) is rewritten when a run starts and ends: running the same sweep
again skips finished runs and resumes a cut-off one; a failing run is recorded and the sweep goes
on; ``skip.flag`` in the sweep folder ends the running one early (its tuned file is written).
"""
from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import SelvaError
from ..hooks import Hooks, Interrupted, or_default
from ..train import plots
from ..train.files import fresh_run_dir, write_json
from ..train.loop import list_checkpoints
from ..train.options import settings_of
from ..train.sweep import DONE, SKIP_FLAG, SUMMARY_FORMAT, SUMMARY_NAME, registered
from .tuner import VocoderTuningConfig

log = logging.getLogger(__name__)

# What the earlier pack's BigVGAN Scheduler used for a key its file left out.
EARLIER_DEFAULTS = {"segment_seconds": 2.0, "use_gafilter": True, "gafilter_kernel_size": 9,
                    "lambda_phase": 1.0, "seed": 42}
PATH_KEYS = ("data_dir", "discriminator_path")


@dataclass
class VocoderExperiment:
    name: str
    settings: dict[str, Any]  # defaults + base + overrides
    description: str = ""
    group: str = ""


@dataclass
class VocoderSweepFile:
    experiments: list[VocoderExperiment]
    name: str
    description: str = ""
    output_root: Optional[str] = None
    earlier_layout: bool = False
    extra: dict = field(default_factory=dict)


def read_vocoder_sweep(path: Path) -> VocoderSweepFile:
    """The experiments of a vocoder sweep file (either layout), validated; clear errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SelvaError(f"Experiments file {path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SelvaError(f"{path} is not valid JSON: {e}.") from e
    if not isinstance(data, dict) or not isinstance(data.get("experiments"), list) or not data["experiments"]:
        raise SelvaError(f"{path} must hold {{\"base\": {{...}}, \"experiments\": [{{\"name\": ...}}, ...]}} "
                         f"with at least one experiment.")
    base = data.get("base", {})
    if not isinstance(base, dict):
        raise SelvaError(f"{path}: 'base' must be an object of BigVGAN Trainer settings.")
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
        if name in seen or "/" in name or "\\" in name:
            raise SelvaError(f"{path}: experiment name {name!r} is repeated or not a valid folder name.")
        seen.add(name)
        overrides = {k: v for k, v in entry.items() if k not in ("name", "id", "description", "group")}
        settings = {**defaults, **base, **overrides}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise SelvaError(f"{path}: experiment {name!r} has unknown setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}.")
        if not settings.get("data_dir"):
            raise SelvaError(f"{path}: experiment {name!r} has no data_dir (set it at the top or in base).")
        out.append(VocoderExperiment(name, settings, str(entry.get("description", "")),
                                     str(entry.get("group", ""))))
    return VocoderSweepFile(out, str(data.get("name") or path.stem), str(data.get("description", "")),
                            data.get("output_root") or None, earlier)


def _losses(run_dir: Optional[str]) -> list[float]:
    if not run_dir:
        return []
    try:
        with open(Path(run_dir) / "losses.csv", newline="") as f:
            return [float(row["loss"]) for row in csv.DictReader(f)]
    except (OSError, ValueError, KeyError):
        return []


def _read_summary(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") == SUMMARY_FORMAT and data.get("kind") == "vocoder":
            return data
    except (OSError, ValueError):
        pass
    return {}


@dataclass
class VocoderSweepResult:
    sweep_dir: Path
    summary_path: Path
    summary: dict
    comparison: Any  # PIL image


def run_vocoder_sweep(pipe, experiments_file: Path, output_dir: Path, *, hooks: Optional[Hooks] = None,
                      resolve: Callable[[str], Path] = lambda p: Path(p).expanduser(),
                      on_step: Optional[Callable] = None) -> VocoderSweepResult:
    """Run every experiment not already done; see the module docstring. ``resolve`` turns the
    file's paths (data_dir, discriminator_path, output_root) into folders (a node resolves
    relative ones inside ComfyUI's output folder)."""
    from .tuner import tune_vocoder

    hooks = or_default(hooks)
    sweep = read_vocoder_sweep(experiments_file)
    sweep_dir = resolve(sweep.output_root) if sweep.output_root else Path(output_dir) / Path(experiments_file).stem
    sweep_dir.mkdir(parents=True, exist_ok=True)
    summary_path = sweep_dir / SUMMARY_NAME
    summary = _read_summary(summary_path) or {"format": SUMMARY_FORMAT, "version": 1, "kind": "vocoder"}
    summary.update(experiments_file=str(experiments_file), name=sweep.name, description=sweep.description)
    runs: dict[str, dict] = summary.setdefault("runs", {})
    flag = sweep_dir / SKIP_FLAG
    flag.unlink(missing_ok=True)  # a flag left from before must not skip a new run
    write_json(summary_path, summary)
    audio_cache: dict = {}
    with registered(sweep_dir):
        for n, exp in enumerate(sweep.experiments, 1):
            previous = runs.get(exp.name, {})
            if previous.get("status") in DONE:
                log.info("Vocoder sweep: %s already done (%s), skipping", exp.name, previous["status"])
                continue
            record = {"settings": exp.settings, "description": exp.description, "group": exp.group,
                      "status": "running", "error": None}
            resume, run_dir = None, None
            old_dir = previous.get("run_dir")
            if old_dir and list_checkpoints(Path(old_dir)) and previous.get("status") in ("running", "interrupted"):
                resume, run_dir = Path(old_dir), Path(old_dir)  # a run cut off by a crash continues
            started = time.monotonic()
            try:
                settings = dict(exp.settings)
                disc = str(settings.pop("discriminator_path", "") or "").strip()
                cfg = VocoderTuningConfig(data_dir=resolve(str(settings.pop("data_dir"))), output_path=sweep_dir,
                                          discriminator_path=resolve(disc) if disc else None, resume=resume,
                                          **settings).validate()
                if run_dir is None:
                    run_dir = fresh_run_dir(sweep_dir, exp.name)
                record["run_dir"] = str(run_dir)
                runs[exp.name] = record
                write_json(summary_path, summary)
                flag.unlink(missing_ok=True)
                path, result = tune_vocoder(pipe, cfg, hooks, on_step=on_step, run_dir=run_dir,
                                            should_stop=flag.is_file, audio_cache=audio_cache)
                record.update(status=result.status, final_loss=result.final_loss, best_loss=result.best_loss,
                              steps_done=result.steps_done, vocoder=str(path))
            except Interrupted:
                record.update(status="interrupted")
                raise
            except Exception as e:  # recorded; the sweep goes on with the next experiment
                log.warning("Vocoder sweep: experiment %s failed: %s", exp.name, e)
                record.update(status="failed", error=f"{type(e).__name__}: {e}")
            finally:
                flag.unlink(missing_ok=True)
                record["seconds"] = round(time.monotonic() - started, 3)
                runs[exp.name] = record
                summary["vocoders"] = [{"name": k, "path": r["vocoder"]} for k, r in runs.items()
                                       if r.get("status") in DONE and r.get("vocoder")]
                write_json(summary_path, summary)
            hooks.step("sweep", n, len(sweep.experiments))
    curves = {name: _losses(r.get("run_dir")) for name, r in runs.items()}
    image = plots.comparison_image({k: v for k, v in curves.items() if v}, title=f"vocoder sweep {sweep.name}")
    plots.save_png(sweep_dir / "comparison_curves.png", image)
    return VocoderSweepResult(sweep_dir, summary_path, summary, image)
