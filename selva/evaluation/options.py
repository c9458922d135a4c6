"""The evaluation's settings and metric names (no heavy imports: the CLI parser reads them)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SelvaError

ALL_METRICS = ("desync", "clap", "fd", "kl", "spectral")
# "lower" is better for every metric but the CLAP score (text-audio agreement: higher is better)
DIRECTION = {"desync": "lower", "clap": "higher", "fd": "lower", "kl": "lower", "spectral": "lower"}


@dataclass
class EvalOptions:
    metrics: tuple[str, ...] = field(default=ALL_METRICS, metadata={"help": "metrics to compute"})
    steps: int = field(default=25, metadata={"help": "Euler steps per clip"})
    cfg_strength: float = field(default=4.5, metadata={"help": "classifier-free guidance strength"})
    seed: int = field(default=42, metadata={"help": "noise seed, the same for every model"})
    negative_prompt: str = field(default="", metadata={"help": "negative prompt for every clip"})


def parse_metrics(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in ALL_METRICS]
    if unknown or not names:
        raise SelvaError(f"Unknown metric(s) {', '.join(unknown) or '(none given)'}: choose from "
                         f"{', '.join(ALL_METRICS)} (comma-separated).")
    return names
