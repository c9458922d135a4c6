"""Rank a finished LoRA sweep on held-out clips (the evaluation core of ``selva/evaluation``).

After the experiments, the base model and every experiment that saved an adapter generate each
clip of a held-out dataset folder with the same seed; the chosen metric orders them. The sweep's
``experiment_summary.json`` gets ``ranking`` (metric, direction, order best first, values, the
experiments left out and why) and each run its metric means; ``metrics.json`` / ``metrics.png``
and the generated clips stay in ``<sweep>/evaluation/<settings digest>/``, so running the sweep
again trains nothing and reuses every clip.

A sweep file turns it on with a top-level ``"evaluation"`` object::

    {"base": {...}, "experiments": [...],
     "evaluation": {"held_out_dir": "held_out", "rank_by": "desync", "metrics": "desync,fd",
                    "steps": 25, "cfg_strength": 4.5, "seed": 42}}
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import SelvaError
from ..evaluation.options import ALL_METRICS, EvalOptions, parse_metrics
from ..hooks import Hooks

log = logging.getLogger(__name__)

EVAL_FOLDER = "evaluation"


@dataclass
class RankOptions:
    held_out_dir: Path = field(metadata={"help": "dataset folder of clips left out of training"})
    rank_by: str = field(default="desync", metadata={"help": f"metric the sweep is ranked by ({', '.join(ALL_METRICS)})"})
    evaluation: EvalOptions = field(default_factory=lambda: EvalOptions(metrics=()), metadata={
        "help": "generation settings and further metrics to record (rank_by is always computed)"})

    def __post_init__(self) -> None:
        names = parse_metrics(str(self.rank_by))
        if len(names) != 1:
            raise SelvaError(f"rank_by takes one metric, not {self.rank_by!r}: one of {', '.join(ALL_METRICS)}.")
        self.rank_by = names[0]
        if self.rank_by not in self.evaluation.metrics:
            self.evaluation = replace(self.evaluation, metrics=(self.rank_by, *self.evaluation.metrics))


def rank_options(spec: Any, source: Path, resolve: Callable[[str], Path]) -> Optional[RankOptions]:
    """A sweep file's ``"evaluation"`` object as options (None when absent or without held_out_dir)."""
    if spec is None:
        return None
    eval_keys = {f.name for f in fields(EvalOptions)}
    unknown = sorted(set(spec) - eval_keys - {"held_out_dir", "rank_by"}) if isinstance(spec, dict) else []
    if not isinstance(spec, dict) or unknown:
        raise SelvaError(f"{source}: \"evaluation\" must be an object with held_out_dir, rank_by and any of "
                         f"{', '.join(sorted(eval_keys))}" + (f"; unknown: {', '.join(unknown)}." if unknown else "."))
    if not str(spec.get("held_out_dir") or "").strip():
        return None
    settings = {k: v for k, v in spec.items() if k in eval_keys}
    metrics = settings.pop("metrics", ())
    settings["metrics"] = parse_metrics(metrics if isinstance(metrics, str) else ",".join(map(str, metrics))) \
        if metrics else ()
    return RankOptions(resolve(str(spec["held_out_dir"]).strip()), str(spec.get("rank_by", "desync")),
                       EvalOptions(**settings))


@dataclass
class PreparedRanking:
    options: RankOptions
    weight_paths: dict[str, Path]


def prepare_ranking(pipe, options: RankOptions, experiment_names: Sequence[str]) -> PreparedRanking:
    """Every check that can fail before hours of training: the folder, its clips, the networks."""
    from ..datasets.reader import read_dataset
    from ..evaluation.run import BASE_NAME
    from ..evaluation.weights import resolve_metric_weights
    from ..weights import default_models_dir

    if BASE_NAME in experiment_names:
        raise SelvaError(f"An experiment is named {BASE_NAME!r}, the name the ranking gives the base model: "
                         f"rename it, or turn the held-out ranking off.")
    if not Path(options.held_out_dir).is_dir():
        raise SelvaError(f"held_out_dir {options.held_out_dir} is not a folder: give the dataset folder of "
                         f"clips left out of training (features .npz + audio, the trainers' layout).")
    read_dataset(Path(options.held_out_dir))  # a folder without clips fails now, with the reader's error
    models_dir = getattr(pipe.options, "models_dir", None) or default_models_dir()
    paths = resolve_metric_weights(options.evaluation.metrics, Path(models_dir),
                                   allow_download=getattr(pipe.options, "allow_download", True))
    return PreparedRanking(options, paths)


def _folder(sweep_dir: Path, options: RankOptions) -> Path:
    """Clips made with the same data and settings land in the same folder (reused on a re-run);
    other settings get another one, so nothing kept is overwritten."""
    from ..features import content_hash

    ev = asdict(options.evaluation)
    ev.pop("metrics")  # which metrics are scored does not change the generated clips
    key = content_hash(["sweep-held-out", str(Path(options.held_out_dir).expanduser().resolve()), ev])
    return Path(sweep_dir) / EVAL_FOLDER / key[:12]


def rank_sweep(pipe, sweep_dir: Path, summary: dict, prepared: PreparedRanking, hooks: Hooks) -> Any:
    """Evaluate the base model and each finished experiment's adapter, record the ranking in
    ``summary`` (the caller writes it); returns the metrics chart, (H, W, 3) uint8."""
    from ..adapters.compare import AdapterEntry
    from ..evaluation.report import written_chart
    from ..evaluation.run import BASE_NAME, check_entries, evaluate
    from .sweep_runner import DONE

    options, metric = prepared.options, prepared.options.rank_by
    summary.pop("ranking", None)  # an earlier ranking must not outlive a failed re-ranking
    runs: dict[str, dict] = summary["runs"]
    entries = [AdapterEntry(BASE_NAME, None)]
    left_out: dict[str, str] = {}
    for name, run in runs.items():
        if run.get("status") in DONE and run.get("adapter"):
            entries.append(AdapterEntry(name, Path(run["adapter"])))
        elif run.get("status") == "failed":
            left_out[name] = f"failed: {run.get('error')}"
        else:
            left_out[name] = f"no adapter (status {run.get('status')})"
    check_entries(pipe, entries)
    folder = _folder(sweep_dir, options)
    data = evaluate(pipe, options.held_out_dir, entries, folder, options.evaluation, prepared.weight_paths,
                    hooks=hooks, extra_settings={"sweep": str(sweep_dir)})
    direction = data["directions"][metric]  # read, never assumed: some metrics are higher-is-better
    values = {name: model[metric]["mean"] for name, model in data["models"].items()}
    for name, model in data["models"].items():
        if name in runs:
            runs[name]["metrics"] = {m: r["mean"] for m, r in model.items()}
    unscored = {name: "; ".join(f"{clip}: {why}" for clip, why in data["models"][name][metric]["unscored"].items())
                or "no clip could be scored" for name, v in values.items() if v is None}
    order = [name for name in data["ranking"][metric] if values[name] is not None]
    summary["ranking"] = {
        "metric": metric, "direction": direction, "held_out_dir": str(options.held_out_dir),
        "order": order, "best": next((n for n in order if n != BASE_NAME), None),
        "values": values, "left_out": {**left_out, **unscored},
        "metrics_json": str(folder / "metrics.json"), "chart": data["chart"]}
    log.info("Sweep ranked by %s (%s is better): %s", metric, direction, ", ".join(order))
    return written_chart(data)


def ranking_text(summary: dict) -> str:
    """The ranking in a few lines for the node's output ('' when the sweep was not ranked)."""
    r = summary.get("ranking")
    if not r:
        return ""
    lines = [f"Best experiment by {r['metric']} ({r['direction']} is better): {r['best'] or 'none'}"]
    lines += [f"{i}. {name}: {r['values'][name]:.4g}" for i, name in enumerate(r["order"], 1)]
    lines += [f"left out: {name} ({why})" for name, why in r["left_out"].items()]
    return "\n".join(lines)
