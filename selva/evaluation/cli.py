"""``python -m selva evaluate``: score the base model and adapters on a held-out dataset folder."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable

from ..errors import SelvaError

log = logging.getLogger(__name__)


def register(sub: Any, add_model_args: Callable, load_options: Callable) -> dict[str, Callable]:
    from .options import ALL_METRICS, EvalOptions

    defaults = EvalOptions()
    p = sub.add_parser("evaluate", help="DeSync / CLAP / FD / KL / spectral metrics of adapters on held-out clips")
    p.add_argument("--data", type=Path, required=True,
                   help="held-out dataset folder (features .npz + real audio, as the trainers read)")
    p.add_argument("--adapters", default=None,
                   help="JSON list of adapter files (or a LoRA Scheduler's experiment_summary.json)")
    p.add_argument("--lora", type=Path, action="append", default=[], help="an adapter file (repeatable)")
    p.add_argument("--base", action="store_true",
                   help="also score the base model (always on when no adapter is given)")
    p.add_argument("--metrics", default=",".join(ALL_METRICS),
                   help=f"comma-separated subset of {','.join(ALL_METRICS)} (default: all). clap "
                        f"(LAION-CLAP cosine of each clip's audio and its prompt) is higher-is-better, "
                        f"the others lower-is-better")
    p.add_argument("--steps", type=int, default=defaults.steps, help=f"Euler steps (default: {defaults.steps})")
    p.add_argument("--cfg", "--cfg-strength", dest="cfg", type=float, default=defaults.cfg_strength,
                   help=f"classifier-free guidance strength (default: {defaults.cfg_strength})")
    p.add_argument("--seed", type=int, default=defaults.seed,
                   help=f"noise seed, the same for every model (default: {defaults.seed})")
    p.add_argument("--negative-prompt", default="", help="negative prompt for every clip")
    p.add_argument("--out-dir", type=Path, required=True,
                   help="writes metrics.json, metrics.png and the generated clips (kept for resuming)")
    add_model_args(p)
    return {"evaluate": lambda args: _run(args, load_options)}


def _run(args: argparse.Namespace, load_options: Callable) -> int:
    from ..hooks import Hooks
    from ..pipeline import SelvaPipeline
    from ..weights import default_models_dir
    from .run import EvalOptions, check_entries, entries_from, evaluate, parse_metrics
    from .weights import resolve_metric_weights

    hooks = Hooks(progress=lambda stage, done, total: log.info("%s: %d/%d", stage, done, total))
    metrics = parse_metrics(args.metrics)
    entries = entries_from(args.adapters, args.lora, args.base or not (args.adapters or args.lora))
    if not entries:
        raise SelvaError(f"{args.adapters} names no adapter; add --base or adapters to evaluate.")
    options = load_options(args)
    models_dir = Path(options.models_dir) if options.models_dir else default_models_dir()
    # every metric network is found (or downloaded) before the long generation starts
    weight_paths = resolve_metric_weights(metrics, models_dir, allow_download=not args.offline)
    pipe = SelvaPipeline.load(options, hooks=hooks)
    check_entries(pipe, entries)
    eval_options = EvalOptions(metrics=metrics, steps=args.steps, cfg_strength=args.cfg, seed=args.seed,
                               negative_prompt=args.negative_prompt)
    data = evaluate(pipe, args.data, entries, args.out_dir, eval_options, weight_paths, hooks=hooks,
                    extra_settings={"precision": args.precision})
    for metric, best in data["best"].items():
        log.info("%-8s best: %s", metric, best)
    log.info("Wrote %s and %s", Path(args.out_dir) / "metrics.json", data["chart"])
    return 0
