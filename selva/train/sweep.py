"""LoRA sweeps: several training runs from one experiments file, one dataset encoding.

    {"base": {"data_dir": "my_sounds", "steps": 1000, "rank": 16},
     "experiments": [{"name": "r8", "rank": 8}, {"name": "r32_pissa", "rank": 32, "init": "pissa"}]}

Each experiment = ``base`` updated with its overrides. The sweep folder is
``<output_dir>/<experiments file stem>``; the per-experiment loop (resume, skip, failures, the
summary) is :mod:`.sweep_runner`'s. The summary's ``adapters`` list (baseline first) is what the
LoRA Evaluator reads as ``adapters_file``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import SelvaError
from ..hooks import Hooks, or_default
# the shared loop and the names every sweep kind uses (re-exported: nodes and tests read them here)
from .files import write_json
from .sweep_runner import (DONE, SKIP_FLAG, SUMMARY_NAME, SweepEntry, SweepKind, SweepResult,  # noqa: F401
                           active_sweeps, check_experiment, open_summary, read_sweep_file, request_skip,
                           run_entries)

log = logging.getLogger(__name__)


def read_experiments(path: Path, options_cls: Optional[type] = None) -> list[SweepEntry]:
    """The experiments of a sweep file, each validated; clear errors for every mistake.

    ``options_cls``: the trainer's options dataclass (default LoRA's; textual inversion passes
    its own), which names the settings an experiment may hold."""
    from ..compat.sweep import from_earlier_layout  # a file of the earlier pack runs as it did there
    from .lora_trainer import LoraTrainOptions

    options_cls = options_cls or LoraTrainOptions
    path, data, base = read_sweep_file(path, "trainer inputs",
                                       lambda data, source: from_earlier_layout(data, options_cls, source))
    known = set(options_cls.__dataclass_fields__) | {"data_dir", "eval_features"}
    out, seen = [], set()
    for i, entry in enumerate(data["experiments"], 1):
        if not isinstance(entry, dict) or not str(entry.get("name", "")).strip():
            raise SelvaError(f"{path}: experiment {i} needs a \"name\".")
        name = str(entry["name"]).strip()
        info = {k: entry[k] for k in ("description", "group") if k in entry}
        settings = {**base, **{k: v for k, v in entry.items() if k != "name" and k not in info}}
        check_experiment(path, name, settings, known, seen, "in base")
        out.append(SweepEntry(name, settings, info))
    return out


def sweep_dir_for(experiments_file: Path, output_dir: Path) -> Path:
    from ..compat.sweep import sweep_folder  # an earlier-pack file names its folder (output_root)

    return sweep_folder(experiments_file, Path(output_dir) / Path(experiments_file).stem, output_dir)


def _adapter_list(runs: dict[str, dict]) -> list:
    """What the LoRA Evaluator reads from this file: the baseline, then every saved adapter."""
    return [""] + [{"path": r["adapter"], "name": name} for name, r in runs.items()
                   if r.get("status") in DONE and r.get("adapter")]


def run_sweep(pipe, experiments_file: Path, output_dir: Path, *, hooks: Optional[Hooks] = None,
              train: Optional[Callable[..., Any]] = None,
              options_cls: Optional[type] = None,
              resolve_data_dir: Optional[Callable[[str], Path]] = None,
              rank: Optional[dict[str, Any]] = None) -> SweepResult:
    """Run every experiment not already done; see the module docstring.

    ``train`` / ``options_cls``: another trainer with the same call shape as ``train_lora`` and
    its options dataclass (with ``from_dict`` and ``validate``), e.g. textual inversion.
    ``resolve_data_dir``: turns each experiment's ``data_dir`` and ``eval_features`` text into a
    path (the nodes' path rule); by default it is used as given (relative = from the working
    folder). ``rank``: keys of the file's ``"evaluation"`` object set here instead (the node's
    held_out_dir / rank_by); with a held_out_dir the finished sweep is ranked on those clips
    (:mod:`.sweep_ranking`)."""
    from .dataset import load_dataset
    from .lora_trainer import LoraTrainOptions, train_lora

    hooks = or_default(hooks)
    train = train or train_lora
    options_cls = options_cls or LoraTrainOptions
    experiments = read_experiments(experiments_file, options_cls)
    resolve = resolve_data_dir or (lambda text: Path(text).expanduser())
    # a data_dir the path rule refuses (e.g. moved) is an error for the whole sweep, before any training
    data_dirs = {e.name: resolve(str(e.settings["data_dir"])) for e in experiments}
    ranking = _ranking(pipe, experiments_file, experiments, rank, resolve, lora=options_cls is LoraTrainOptions)
    sweep_dir = sweep_dir_for(experiments_file, output_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    from ..compat.sweep import sweep_info  # an earlier-pack file's name and description

    summary = open_summary(sweep_dir, {"experiments_file": str(experiments_file), **sweep_info(experiments_file)})
    datasets: dict[str, Any] = {}

    def prepare(entry: SweepEntry, resume: Optional[Path]):
        settings = dict(entry.settings)
        data_dir = data_dirs[entry.name]
        settings.pop("data_dir")
        eval_path = settings.pop("eval_features", None)
        options = options_cls.from_dict(settings)
        options.validate()
        key = str(data_dir.resolve())
        if key not in datasets:  # experiments on the same data share one encoding
            datasets[key] = load_dataset(pipe, data_dir, hooks=hooks)

        def run(run_dir: Path, should_stop: Callable[[], bool]):
            eval_features = None
            if eval_path:
                from ..features import Features
                eval_features = Features.load(resolve(str(eval_path)))
            result = train(pipe, data_dir, sweep_dir, options, resume=None if resume is None else str(resume),
                           eval_features=eval_features, dataset=datasets[key], hooks=hooks,
                           should_stop=should_stop, run_dir=run_dir).result
            return result, str(result.exported) if result.exported else None
        return run

    kind = SweepKind("Sweep", "adapter", "adapters", _adapter_list, prepare, title=f"sweep {sweep_dir.name}")
    result = run_entries(sweep_dir, summary, experiments, kind, hooks)
    if ranking is not None:
        from .sweep_ranking import rank_sweep

        result.metrics_chart = rank_sweep(pipe, sweep_dir, summary, ranking, hooks)
        write_json(result.summary_path, summary)
    return result


def _ranking(pipe, experiments_file: Path, experiments: list[SweepEntry], overrides: Optional[dict],
             resolve: Callable[[str], Path], lora: bool):
    """The held-out ranking asked for by the file and/or ``overrides``, checked before any
    training (a missing folder or network fails in seconds, not after the sweep); None = off."""
    from .sweep_ranking import prepare_ranking, rank_options

    data = json.loads(Path(experiments_file).expanduser().read_text(encoding="utf-8"))
    spec = data.get("evaluation") if isinstance(data, dict) else None
    if overrides:
        spec = {**(spec if isinstance(spec, dict) else {}), **overrides}
    options = rank_options(spec, experiments_file, resolve)
    if options is not None and not lora:
        raise SelvaError(f"{experiments_file}: the held-out ranking (\"evaluation\") scores LoRA adapters; "
                         f"remove it from this sweep file.")
    return None if options is None else prepare_ranking(pipe, options, [e.name for e in experiments])
