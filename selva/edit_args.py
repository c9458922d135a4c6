"""``python -m selva generate``'s editing flags: --init-audio, --denoise, --regenerate START:END."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Optional

from .errors import SelvaError

if TYPE_CHECKING:  # the parser is built without importing torch
    from .editing import EditOptions


def add_edit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("editing (see docs/editing.md)")
    g.add_argument("--init-audio", default=None,
                   help="audio file to start from (any format, rate and channel count; mixed to mono): "
                        "reshaped with --denoise, a range regenerated with --regenerate, or continued "
                        "when shorter than --duration")
    g.add_argument("--denoise", type=float, default=None,
                   help="how much of --init-audio is regenerated, 0-1 (default 1: from pure noise; "
                        "0 = the input through the VAE); --steps counts the part that runs")
    g.add_argument("--regenerate", default=None, metavar="START:END",
                   help="regenerate only START..END seconds of --init-audio, keeping the rest exactly")


def edit_from_args(args: argparse.Namespace) -> Optional["EditOptions"]:
    """The edit the flags ask for (None: no editing flag given)."""
    from .editing import EditOptions

    if args.init_audio is None and args.denoise is None and args.regenerate is None:
        return None
    start, end = 0.0, 0.0
    if args.regenerate is not None:
        try:
            start, end = (float(part) for part in args.regenerate.split(":"))
        except ValueError:
            raise SelvaError(f"--regenerate takes START:END in seconds, e.g. 2.5:4, got "
                             f"{args.regenerate!r}.") from None
        if start == end == 0.0:
            raise SelvaError("--regenerate 0:0 is an empty range; give START < END.")
    wave, rate = None, 0
    if args.init_audio is not None:
        from .train.audio_files import read_audio

        wave, rate = read_audio(args.init_audio)
        wave = wave[None]
    return EditOptions(wave, rate, 1.0 if args.denoise is None else args.denoise, start, end)
