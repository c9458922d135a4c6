"""LoRA sweeps: several training runs from one experiments file, one dataset encoding.

    {"base": {"data_dir": "my_sounds", "steps": 1000, "rank": 16},
     "experiments": [{"name": "r8", "rank": 8}, {"name": "r32_pissa", "rank": 32, "init": "pissa"}]}

Each experiment = ``base`` updated with its overrides. The sweep folder is
``<output_dir>/<experiments file stem>``; each run trains into a fresh ``<name>_NNN`` inside it.
``experiment_summary.json`` is rewritten (atomically) when a run starts and after it ends (its
``adapters`` list -- baseline first -- is what the LoRA Evaluator reads as ``adapters_file``), so a
crash keeps the finished runs and running the same sweep again skips them (a run that was cut
off resumes from its last checkpoint). A failing run is recorded with its error and the sweep
goes on. Skipping: a flag file ``skip.flag`` in the sweep folder (written by
:func:`request_skip`: the SelvaSkipExperiment node, the ``/selva/skip`` HTTP route, or
``python -m selva skip <sweep dir>``) ends the running experiment like a finished one (its
adapter is saved) and the sweep continues with the next.
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..errors import SelvaError
from ..hooks import Hooks, Interrupted, or_default
from . import plots
from .files import fresh_run_dir, write_json
from .loop import list_checkpoints

log = logging.getLogger(__name__)

SUMMARY_NAME = "experiment_summary.json"
SKIP_FLAG = "skip.flag"
SUMMARY_FORMAT = "selva-sweep"
DONE = ("finished", "stopped")

# Sweeps running in this process (the HTTP route skips the newest when given no folder).
_ACTIVE: list[Path] = []
_ACTIVE_LOCK = threading.Lock()


@dataclass
class Experiment:
    name: str
    settings: dict[str, Any]  # base + overrides: trainer inputs (data_dir and LoRA options)
    info: dict[str, Any] = field(default_factory=dict)  # description / group, kept in the summary


def read_experiments(path: Path, options_cls: Optional[type] = None) -> list[Experiment]:
    """The experiments of a sweep file, each validated; clear errors for every mistake.

    ``options_cls``: the trainer's options dataclass (default LoRA's; textual inversion passes
    its own), which names the settings an experiment may hold."""
    from .lora_trainer import LoraTrainOptions

    options_cls = options_cls or LoraTrainOptions

    path = Path(path).expanduser()
    if not path.is_file():
        raise SelvaError(f"Experiments file {path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SelvaError(f"{path} is not valid JSON: {e}.") from e
    from ..compat.sweep import from_earlier_layout  # a file of the earlier pack runs as it did there

    data = from_earlier_layout(data, options_cls, path)
    if not isinstance(data, dict) or not isinstance(data.get("experiments"), list) or not data["experiments"]:
        raise SelvaError(f"{path} must hold {{\"base\": {{...}}, \"experiments\": [{{\"name\": ...}}, ...]}} "
                         f"with at least one experiment.")
    base = data.get("base", {})
    if not isinstance(base, dict):
        raise SelvaError(f"{path}: 'base' must be an object of trainer inputs.")
    known = set(options_cls.__dataclass_fields__) | {"data_dir", "eval_features"}
    out, seen = [], set()
    for i, entry in enumerate(data["experiments"], 1):
        if not isinstance(entry, dict) or not str(entry.get("name", "")).strip():
            raise SelvaError(f"{path}: experiment {i} needs a \"name\".")
        name = str(entry["name"]).strip()
        if name in seen or "/" in name or "\\" in name:
            raise SelvaError(f"{path}: experiment name {name!r} is repeated or not a valid folder name.")
        seen.add(name)
        info = {k: entry[k] for k in ("description", "group") if k in entry}
        settings = {**base, **{k: v for k, v in entry.items() if k != "name" and k not in info}}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise SelvaError(f"{path}: experiment {name!r} has unknown setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}.")
        if not settings.get("data_dir"):
            raise SelvaError(f"{path}: experiment {name!r} has no data_dir (set it in base).")
        out.append(Experiment(name, settings, info))
    return out


def sweep_dir_for(experiments_file: Path, output_dir: Path) -> Path:
    from ..compat.sweep import sweep_folder  # an earlier-pack file names its folder (output_root)

    return sweep_folder(experiments_file, Path(output_dir) / Path(experiments_file).stem, output_dir)


def request_skip(sweep_dir: Optional[Path] = None) -> Path:
    """Ask the sweep in ``sweep_dir`` (default: the newest running in this process) to end its
    running experiment. Returns the flag file."""
    if sweep_dir is None or not str(sweep_dir).strip():
        with _ACTIVE_LOCK:
            if not _ACTIVE:
                raise SelvaError("No sweep is running in this process; give the sweep folder.")
            sweep_dir = _ACTIVE[-1]
    sweep_dir = Path(sweep_dir).expanduser()
    if not (sweep_dir / SUMMARY_NAME).is_file():
        raise SelvaError(f"{sweep_dir} is not a sweep folder (it has no {SUMMARY_NAME}).")
    flag = sweep_dir / SKIP_FLAG
    flag.write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
    log.info("Skip requested for the running experiment of %s", sweep_dir)
    return flag


def active_sweeps() -> list[Path]:
    with _ACTIVE_LOCK:
        return list(_ACTIVE)


@contextlib.contextmanager
def registered(sweep_dir: Path) -> Iterator[None]:
    """Mark ``sweep_dir`` as running in this process for the block (skip requests without a
    folder reach the newest); every kind of sweep (LoRA, vocoder) registers the same way."""
    with _ACTIVE_LOCK:
        _ACTIVE.append(sweep_dir)
    try:
        yield
    finally:
        with _ACTIVE_LOCK:
            if sweep_dir in _ACTIVE:
                _ACTIVE.remove(sweep_dir)


def _read_summary(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") == SUMMARY_FORMAT:
            return data
    except (OSError, ValueError):
        pass
    return {}


def _losses_of(run_dir: Optional[str]) -> list[float]:
    import csv

    if not run_dir:
        return []
    path = Path(run_dir) / "losses.csv"
    try:
        with open(path, newline="") as f:
            return [float(row["loss"]) for row in csv.DictReader(f)]
    except (OSError, ValueError, KeyError):
        return []


def _adapter_list(runs: dict[str, dict]) -> list:
    """What the LoRA Evaluator reads from this file: the baseline, then every saved adapter."""
    return [""] + [{"path": r["adapter"], "name": name} for name, r in runs.items()
                   if r.get("status") in DONE and r.get("adapter")]


@dataclass
class SweepResult:
    sweep_dir: Path
    summary_path: Path
    summary: dict
    comparison: Any  # PIL image


def run_sweep(pipe, experiments_file: Path, output_dir: Path, *, hooks: Optional[Hooks] = None,
              train: Optional[Callable[..., Any]] = None,
              options_cls: Optional[type] = None,
              resolve_data_dir: Optional[Callable[[str], Path]] = None) -> SweepResult:
    """Run every experiment not already done; see the module docstring.

    ``train`` / ``options_cls``: another trainer with the same call shape as ``train_lora`` and
    its options dataclass (with ``from_dict`` and ``validate``), e.g. textual inversion.
    ``resolve_data_dir``: turns each experiment's ``data_dir`` text into a folder (the nodes' path
    rule); by default it is used as given (relative = from the working folder)."""
    from .dataset import load_dataset
    from .lora_trainer import LoraTrainOptions, train_lora

    hooks = or_default(hooks)
    train = train or train_lora
    options_cls = options_cls or LoraTrainOptions
    experiments = read_experiments(experiments_file, options_cls)
    sweep_dir = sweep_dir_for(experiments_file, output_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    summary_path = sweep_dir / SUMMARY_NAME
    summary = _read_summary(summary_path) or {"format": SUMMARY_FORMAT, "version": 1}
    summary["experiments_file"] = str(experiments_file)
    from ..compat.sweep import sweep_info  # an earlier-pack file's name and description

    summary.update(sweep_info(experiments_file))
    runs: dict[str, dict] = summary.setdefault("runs", {})
    flag = sweep_dir / SKIP_FLAG
    flag.unlink(missing_ok=True)  # a flag left from before must not skip a new run
    write_json(summary_path, summary)
    datasets: dict[str, Any] = {}
    with _ACTIVE_LOCK:
        _ACTIVE.append(sweep_dir)
    try:
        for n, exp in enumerate(experiments, 1):
            previous = runs.get(exp.name, {})
            if previous.get("status") in DONE:
                log.info("Sweep: %s already done (%s), skipping", exp.name, previous["status"])
                continue
            record = {"settings": exp.settings, **exp.info, "status": "running", "error": None}
            settings = dict(exp.settings)
            data_text = str(settings.pop("data_dir"))
            data_dir = resolve_data_dir(data_text) if resolve_data_dir else Path(data_text).expanduser()
            eval_path = settings.pop("eval_features", None)
            resume, run_dir = None, None
            # a run cut off by a crash continues from its last checkpoint
            old_dir = previous.get("run_dir")
            if old_dir and list_checkpoints(Path(old_dir)) and previous.get("status") in ("running", "interrupted"):
                resume, run_dir = str(old_dir), Path(old_dir)
            started = time.monotonic()
            try:
                options = options_cls.from_dict(settings)
                options.validate()
                key = str(data_dir.resolve())
                if key not in datasets:
                    datasets[key] = load_dataset(pipe, data_dir, hooks=hooks)
                if run_dir is None:
                    run_dir = fresh_run_dir(sweep_dir, exp.name)
                record["run_dir"] = str(run_dir)
                runs[exp.name] = record
                write_json(summary_path, summary)
                eval_features = None
                if eval_path:
                    from ..features import Features
                    eval_features = Features.load(Path(eval_path))
                flag.unlink(missing_ok=True)
                run = train(pipe, data_dir, sweep_dir, options, resume=resume, eval_features=eval_features,
                            dataset=datasets[key], hooks=hooks, should_stop=flag.is_file, run_dir=run_dir)
                result = run.result
                record.update(status=result.status, final_loss=result.final_loss, best_loss=result.best_loss,
                              steps_done=result.steps_done, adapter=str(result.exported) if result.exported else None)
            except Interrupted:
                record.update(status="interrupted")
                raise
            except Exception as e:  # recorded; the sweep goes on with the next experiment
                log.warning("Sweep: experiment %s failed: %s", exp.name, e)
                record.update(status="failed", error=f"{type(e).__name__}: {e}")
            finally:
                flag.unlink(missing_ok=True)
                record["seconds"] = round(time.monotonic() - started, 3)
                runs[exp.name] = record
                summary["adapters"] = _adapter_list(runs)
                write_json(summary_path, summary)
            hooks.step("sweep", n, len(experiments))
    finally:
        with _ACTIVE_LOCK:
            if sweep_dir in _ACTIVE:
                _ACTIVE.remove(sweep_dir)
    curves = {name: _losses_of(r.get("run_dir")) for name, r in runs.items()}
    image = plots.comparison_image({k: v for k, v in curves.items() if v}, title=f"sweep {sweep_dir.name}")
    plots.save_png(sweep_dir / "comparison_curves.png", image)
    return SweepResult(sweep_dir, summary_path, summary, image)
