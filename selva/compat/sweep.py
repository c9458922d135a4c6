"""Sweep files in the earlier pack's layout, translated into ours so they run as they ran there.

The earlier layout (its LoRA and TI Schedulers)::

    {"name": "tier1_sweep", "description": "...", "data_dir": "...", "output_root": "...",
     "base": {"steps": 4000, "init_mode": "pissa", "use_rslora": true, ...},
     "experiments": [{"id": "baseline", "description": "...", "group": "..."}, ...]}

What changes in translation (:func:`from_earlier_layout`):

* ``id`` names the run; ``description`` / ``group`` are kept for the summary, not passed to the
  trainer; top-level ``data_dir`` goes into ``base``; ``output_root`` is the sweep folder (a
  relative one inside the sweep's output folder).
* Settings the file leaves out take the EARLIER trainer's defaults (:data:`LORA_DEFAULTS`,
  :data:`TI_DEFAULTS`, :data:`VOCODER_DEFAULTS`), not ours, so a run trains what it trained there.
  Which trainer a file is for is told by the options class the sweep runner is given.
* Earlier option names become ours (:data:`LORA_NAMES`, :data:`TI_NAMES`); ``alpha: 0`` means
  2 x rank; ``init_mode`` ``standard`` is our ``default``; ``inject_mode`` ``suffix`` is our
  path ``clip``.
* An earlier option our trainer does not have (yet) is dropped when its value is the one that
  changes nothing (e.g. ``lora_dropout: 0``); any other value stays, so the trainer's options
  refuse it by name. A key neither layout knows is an error.

A file in our own layout is returned unchanged.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import SelvaError
from .unsupported import TI_INJECT_MODES

# earlier name -> ours (only where they differ; when our options grow a field with the earlier
# name, that field is used as it is)
LORA_NAMES = {"init_mode": "init", "use_rslora": "rslora", "timestep_mode": "timestep_sampling"}
TI_NAMES = {"inject_mode": "path", "timestep_mode": "timestep_sampling"}
VALUE_NAMES = {"init": {"standard": "default"}, "path": TI_INJECT_MODES}

# The earlier LoRA Trainer's / Scheduler's defaults (under our names).
LORA_DEFAULTS: dict[str, Any] = {
    "steps": 2000, "rank": 16, "lr": 1e-4, "alpha": 0.0, "target": "attn.qkv", "batch_size": 4,
    "warmup_steps": 100, "grad_accum": 1, "save_every": 500, "seed": 42,
    "timestep_sampling": "uniform", "init": "pissa", "rslora": True,
}
# The earlier TI Scheduler's defaults (it sampled timesteps uniformly).
TI_DEFAULTS: dict[str, Any] = {
    "n_tokens": 4, "lr": 2e-4, "steps": 3000, "batch_size": 4, "warmup_steps": 100, "seed": 42,
    "save_every": 1000, "init_text": "", "path": "clip", "timestep_sampling": "uniform",
}
# The earlier BigVGAN Scheduler's defaults (GAFilter was on unless a file said otherwise).
VOCODER_DEFAULTS: dict[str, Any] = {
    "train_mode": "snake_alpha_only", "steps": 2000, "lr": 1e-4, "batch_size": 4,
    "segment_seconds": 2.0, "lambda_l2sp": 1e-3, "use_gafilter": True, "gafilter_kernel_size": 9,
    "lambda_phase": 1.0, "save_every": 500, "seed": 42, "discriminator_path": "", "lora_adapter": "",
}
# Earlier options with the value at which they change nothing: dropped if our trainer lacks them.
NEUTRAL = {"lora_dropout": 0.0, "lora_plus_ratio": 1.0, "lr_schedule": "constant",
           "latent_mixup_alpha": 0.0, "latent_noise_sigma": 0.0, "resume_path": "",
           "logit_normal_sigma": 1.0,  # our logit-normal sampling is sigmoid(N(0, 1))
           "use_gafilter": False, "lambda_phase": 0.0, "lora_adapter": "", "discriminator_path": ""}
# Earlier options that only mean something in a mode (dropped with it, if our trainer lacks them).
MODE_ONLY = {"logit_normal_sigma": ("timestep_sampling", ("logit_normal", "curriculum")),
             "curriculum_switch": ("timestep_sampling", ("curriculum",)),
             "gafilter_kernel_size": ("use_gafilter", (True,))}
# Every option the earlier Schedulers passed to their trainers (under the earlier names).
EARLIER_LORA_OPTIONS = frozenset(
    ("steps", "rank", "lr", "alpha", "target", "batch_size", "warmup_steps", "grad_accum",
     "save_every", "resume_path", "seed", "timestep_mode", "logit_normal_sigma", "curriculum_switch",
     "lora_dropout", "lora_plus_ratio", "lr_schedule", "init_mode", "use_rslora",
     "latent_mixup_alpha", "latent_noise_sigma"))
EARLIER_TI_OPTIONS = frozenset(("n_tokens", "lr", "steps", "batch_size", "warmup_steps", "seed",
                                "save_every", "init_text", "inject_mode"))
EARLIER_VOCODER_OPTIONS = frozenset(VOCODER_DEFAULTS)
EARLIER_TOP = ("name", "description", "data_dir", "output_root", "base", "experiments")
INFO_KEYS = ("description", "group")


def is_earlier_layout(data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    entries = data.get("experiments")
    has_ids = isinstance(entries, list) and any(isinstance(e, dict) and "id" in e and "name" not in e
                                                for e in entries)
    return has_ids or any(k in data for k in ("output_root", "name"))


def from_earlier_layout(data: Any, options_cls: type, source: Path) -> Any:
    """``data`` in our layout (see the module docstring); ours is returned as it is."""
    if not is_earlier_layout(data):
        return data
    unknown_top = sorted(set(data) - set(EARLIER_TOP))
    if unknown_top:
        raise SelvaError(f"{source}: unknown top-level key(s) {', '.join(unknown_top)} (a sweep file "
                         f"holds {', '.join(EARLIER_TOP)}).")
    fields = set(options_cls.__dataclass_fields__)
    if "n_tokens" in fields:
        names, defaults = TI_NAMES, TI_DEFAULTS
    elif "train_mode" in fields:  # vocoder tuning (the BigVGAN Scheduler's files)
        names, defaults = {}, VOCODER_DEFAULTS
    else:
        names, defaults = LORA_NAMES, LORA_DEFAULTS
    base = data.get("base", {})
    if not isinstance(base, dict):
        raise SelvaError(f"{source}: 'base' must be an object of trainer inputs.")
    entries = data.get("experiments")
    if not isinstance(entries, list) or not entries:
        raise SelvaError(f"{source} must hold an \"experiments\" list with at least one experiment.")
    # every earlier default, also of options ours lacks: at a neutral value they are dropped below,
    # otherwise the run could not train what it trained there and says so
    out_base = dict(defaults)
    if data.get("data_dir"):
        out_base["data_dir"] = data["data_dir"]
    out_base.update(_rename(base, names, fields))
    experiments = []
    for i, entry in enumerate(entries, 1):
        name = str(entry.get("id", entry.get("name", ""))).strip() if isinstance(entry, dict) else ""
        if not name:
            raise SelvaError(f"{source}: experiment {i} needs an \"id\".")
        own = {k: v for k, v in entry.items() if k not in ("id", "name") + INFO_KEYS}
        settings = _settle({**out_base, **_rename(own, names, fields)}, fields, source, name)
        experiments.append({"name": name, **settings,
                            **{k: entry[k] for k in INFO_KEYS if k in entry}})
    return {"base": {}, "experiments": experiments,
            **{k: data[k] for k in ("name", "description", "output_root") if k in data}, "layout": "earlier pack"}


def _rename(values: Mapping[str, Any], names: Mapping[str, str], fields: set) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        new = key if key in fields else names.get(key, key)
        if new in VALUE_NAMES and isinstance(value, str) and key != new:
            value = VALUE_NAMES[new].get(value, value)
        out[new] = value
    return out


def _settle(settings: dict[str, Any], fields: set, source: Path, name: str) -> dict[str, Any]:
    """alpha 0 -> 2 x rank; earlier options we lack dropped where they change nothing."""
    if "alpha" in settings and "rank" in settings and float(settings["alpha"] or 0) <= 0:
        settings["alpha"] = float(2 * int(settings["rank"]))
    for key, neutral in NEUTRAL.items():
        if key in settings and key not in fields and _same(settings[key], neutral):
            del settings[key]
    for key, (mode_key, modes) in MODE_ONLY.items():
        if key in settings and key not in fields and settings.get(mode_key) not in modes:
            del settings[key]
    earlier = EARLIER_LORA_OPTIONS | EARLIER_TI_OPTIONS | EARLIER_VOCODER_OPTIONS
    lacking = sorted(k for k in settings if k not in fields and k in earlier)
    if lacking:
        raise SelvaError(f"{source}: experiment {name!r} sets the earlier pack's option(s) "
                         f"{', '.join(f'{k}={settings[k]!r}' for k in lacking)}, which this version's "
                         f"trainer does not have yet. Remove them from the file (the run then trains "
                         f"without them) or update ComfyUI-SelVA.")
    return settings


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, float) and isinstance(a, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), b)
    return a == b


def _earlier_file(experiments_file: Path) -> Optional[dict]:
    import json

    try:
        data = json.loads(Path(experiments_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # reading the experiments reports what is wrong with the file
    return data if is_earlier_layout(data) else None


def sweep_folder(experiments_file: Path, default: Path, output_dir: Path) -> Path:
    """An earlier file's ``output_root`` (relative: inside ``output_dir``), else its ``name``
    inside ``output_dir`` (the earlier default), else ``default``."""
    data = _earlier_file(experiments_file)
    if data is None:
        return default
    root = data.get("output_root") or data.get("name")
    if not root:
        return default
    p = Path(str(root)).expanduser()
    return p if p.is_absolute() else Path(output_dir) / p


def sweep_info(experiments_file: Path) -> dict[str, Any]:
    """An earlier file's top-level ``name`` and ``description`` for the summary ({} otherwise)."""
    data = _earlier_file(experiments_file) or {}
    return {k: data[k] for k in ("name", "description") if isinstance(data.get(k), str)}
