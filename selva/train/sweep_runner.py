"""The one per-experiment loop every sweep runs (LoRA, textual inversion, vocoder).

A sweep folder holds ``experiment_summary.json``; the runner reads it back, skips experiments
already done, continues a run that was cut off from its last checkpoint, trains each other one
into a fresh ``<name>_NNN`` folder, records status / losses / steps / seconds / error per run,
rewrites the summary after each, and draws the comparison curves at the end. A failing run is
recorded and the sweep goes on; an interrupt is recorded and raised. What differs between sweep
kinds (how settings become a trainer call, what file a run leaves) is a :class:`SweepKind`.
Every kind reads its file with :func:`read_sweep_file` and checks each experiment with
:func:`check_experiment`.

Skipping: a flag file ``skip.flag`` in the sweep folder (written by :func:`request_skip`: the
SelvaSkipExperiment node, the ``/selva/skip`` HTTP route, or ``python -m selva skip <sweep
dir>``) ends the running experiment like a finished one and the sweep continues with the next.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from ..errors import SelvaError
from ..hooks import Hooks, Interrupted
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
    folder reach the newest)."""
    with _ACTIVE_LOCK:
        _ACTIVE.append(sweep_dir)
    try:
        yield
    finally:
        with _ACTIVE_LOCK:
            if sweep_dir in _ACTIVE:
                _ACTIVE.remove(sweep_dir)


def read_summary(path: Path) -> dict:
    """The sweep summary at ``path`` if it is one, else {}."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") == SUMMARY_FORMAT:
            return data
    except (OSError, ValueError, AttributeError):
        pass
    return {}


def read_sweep_file(path: Path, base_is: str, translate: Optional[Callable[[Any, Path], Any]] = None
                    ) -> tuple[Path, dict, dict]:
    """A sweep file's path (``~`` expanded), its JSON (through ``translate(data, path)``: e.g. an
    earlier pack's layout into ours) and its ``base`` settings; clear errors for a missing file,
    bad JSON or a wrong layout (``base_is``: what ``base`` holds, for the message)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SelvaError(f"Experiments file {path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SelvaError(f"{path} is not valid JSON: {e}.") from e
    if translate is not None:
        data = translate(data, path)
    if not isinstance(data, dict) or not isinstance(data.get("experiments"), list) or not data["experiments"]:
        raise SelvaError(f"{path} must hold {{\"base\": {{...}}, \"experiments\": [{{\"name\": ...}}, ...]}} "
                         f"with at least one experiment.")
    base = data.get("base", {})
    if not isinstance(base, dict):
        raise SelvaError(f"{path}: 'base' must be an object of {base_is}.")
    return path, data, base


def check_experiment(path: Path, name: str, settings: dict[str, Any], known: set[str], seen: set[str],
                     data_dir_hint: str) -> None:
    """One experiment of a sweep file: a new, folder-safe name (added to ``seen``), only ``known``
    settings, a data_dir (``data_dir_hint`` says where to set it)."""
    if name in seen or "/" in name or "\\" in name:
        raise SelvaError(f"{path}: experiment name {name!r} is repeated or not a valid folder name.")
    seen.add(name)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise SelvaError(f"{path}: experiment {name!r} has unknown setting(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}.")
    if not settings.get("data_dir"):
        raise SelvaError(f"{path}: experiment {name!r} has no data_dir (set it {data_dir_hint}).")


def losses_of(run_dir: Optional[str]) -> list[float]:
    """A run's logged losses (``losses.csv``), [] when it has none yet."""
    if not run_dir:
        return []
    try:
        with open(Path(run_dir) / "losses.csv", newline="") as f:
            return [float(row["loss"]) for row in csv.DictReader(f)]
    except (OSError, ValueError, KeyError):
        return []


@dataclass
class SweepEntry:
    name: str
    settings: dict[str, Any]  # what the summary records as the experiment's settings
    info: dict[str, Any] = field(default_factory=dict)  # description / group, kept in the summary


# ``train(run_dir, should_stop)`` -> (the trainer's result, the file the run left or None)
TrainCall = Callable[[Path, Callable[[], bool]], "tuple[Any, Optional[str]]"]


@dataclass
class SweepKind:
    """What one kind of sweep does its own way; the loop is :func:`run_entries`."""
    label: str  # log prefix, e.g. "Sweep"
    output_key: str  # the run record's key for the file a run leaves ("adapter", "vocoder")
    listing_key: str  # the summary's list of finished files ("adapters", "vocoders")
    listing: Callable[[dict[str, dict]], list]  # that list, from the runs
    # checks and turns an experiment's settings into its trainer call; ``resume`` is the cut-off
    # run folder to continue, or None. Errors here are recorded as the run's failure.
    prepare: Callable[[SweepEntry, Optional[Path]], TrainCall]
    title: str = "sweep"  # the comparison chart's title


@dataclass
class SweepResult:
    sweep_dir: Path
    summary_path: Path
    summary: dict
    comparison: Any  # PIL image
    metrics_chart: Any = None  # (H, W, 3) uint8 when the sweep was ranked on held-out clips


def open_summary(sweep_dir: Path, header: dict[str, Any], kind: Optional[str] = None) -> dict:
    """The folder's summary read back (or a new one), with ``header`` written over its top keys.
    A file there that is not this kind of sweep's summary is refused, never read as this sweep's
    runs nor replaced (two kinds of sweep pointed at one folder)."""
    path = Path(sweep_dir) / SUMMARY_NAME
    summary = {"format": SUMMARY_FORMAT, "version": 1, **({"kind": kind} if kind else {})}
    if path.exists():
        summary = read_summary(path)
        if not summary or summary.get("kind") != kind:
            found = (f"the summary of a {summary.get('kind') or 'LoRA / textual inversion'} sweep" if summary
                     else "not a sweep summary this version reads (e.g. the earlier SelVA pack's)")
            raise SelvaError(f"{path} is {found}, not of this {kind or 'LoRA / textual inversion'} sweep; it is "
                             f"left as it is. Move it away, or run this sweep into another output folder.")
    summary.update(header)
    summary.setdefault("runs", {})
    return summary


def run_entries(sweep_dir: Path, summary: dict, entries: Sequence[SweepEntry], kind: SweepKind,
                hooks: Hooks) -> SweepResult:
    """Run every entry not already done into ``sweep_dir``; see the module docstring."""
    summary_path = sweep_dir / SUMMARY_NAME
    runs: dict[str, dict] = summary["runs"]
    flag = sweep_dir / SKIP_FLAG
    flag.unlink(missing_ok=True)  # a flag left from before must not skip a new run
    write_json(summary_path, summary)
    with registered(sweep_dir):
        for n, entry in enumerate(entries, 1):
            previous = runs.get(entry.name, {})
            if previous.get("status") in DONE:
                log.info("%s: %s already done (%s), skipping", kind.label, entry.name, previous["status"])
                continue
            record = {"settings": entry.settings, **entry.info, "status": "running", "error": None}
            resume, run_dir = None, None
            old_dir = previous.get("run_dir")
            if old_dir and list_checkpoints(Path(old_dir)) and previous.get("status") in ("running", "interrupted"):
                resume = run_dir = Path(old_dir)  # a run cut off by a crash continues from its checkpoint
            started = time.monotonic()
            try:
                train = kind.prepare(entry, resume)
                if run_dir is None:
                    run_dir = fresh_run_dir(sweep_dir, entry.name)
                record["run_dir"] = str(run_dir)
                runs[entry.name] = record
                write_json(summary_path, summary)
                flag.unlink(missing_ok=True)
                result, produced = train(run_dir, flag.is_file)
                record.update(status=result.status, final_loss=result.final_loss, best_loss=result.best_loss,
                              steps_done=result.steps_done, **{kind.output_key: produced})
            except Interrupted:
                record.update(status="interrupted")
                raise
            except Exception as e:  # recorded; the sweep goes on with the next experiment
                log.warning("%s: experiment %s failed: %s", kind.label, entry.name, e)
                record.update(status="failed", error=f"{type(e).__name__}: {e}")
            finally:
                flag.unlink(missing_ok=True)
                record["seconds"] = round(time.monotonic() - started, 3)
                runs[entry.name] = record
                summary[kind.listing_key] = kind.listing(runs)
                write_json(summary_path, summary)
            hooks.step("sweep", n, len(entries))
    curves = {name: losses_of(r.get("run_dir")) for name, r in runs.items()}
    image = plots.comparison_image({k: v for k, v in curves.items() if v}, title=kind.title)
    plots.save_png(sweep_dir / "comparison_curves.png", image)
    return SweepResult(sweep_dir, summary_path, summary, image)
