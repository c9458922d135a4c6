"""``python -m selva convert OLD NEW``: an earlier-pack ``.pt`` file rewritten as our safetensors.

Textual inversion, fine-tuned BigVGAN (final and step files), steering vectors and plain LoRA
adapters are read
by our own loaders (which fall back to :mod:`.pt_files` / :mod:`.adapters`) and written by our
own writers, with metadata saying where they came from. The original is never changed, and NEW
is never overwritten unless ``--overwrite`` is given. What cannot be converted says why and what to
do instead.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import SelvaError
from .pt_files import kind_of, read_pt

log = logging.getLogger(__name__)


def register(sub) -> None:
    """Add ``convert`` to ``python -m selva``'s sub-commands."""
    p = sub.add_parser("convert", help="rewrite a .pt file of the earlier SelVA pack (textual "
                                       "inversion, BigVGAN, steering, LoRA) as this pack's .safetensors")
    p.add_argument("old", type=Path, help="the earlier pack's .pt file")
    p.add_argument("new", type=Path, help="the .safetensors file to write")
    p.add_argument("--variant", default="",
                   help="the SelVA variant the file was trained for (e.g. large_44k): recorded in "
                        "the new file; earlier textual-inversion and vocoder files do not say")
    p.add_argument("--overwrite", action="store_true", help="replace NEW if it exists")
    p.set_defaults(handler=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    out = convert(Path(args.old), Path(args.new), variant=args.variant, overwrite=args.overwrite)
    print(out)
    return 0


def convert(old: Path, new: Path, *, variant: str = "", overwrite: bool = False) -> Path:
    """Write ``old`` (an earlier-pack file) to ``new``; returns ``new``."""
    old, new = Path(old).expanduser(), Path(new).expanduser()
    if new.suffix != ".safetensors":
        raise SelvaError(f"{new.name}: the converted file is written as .safetensors; name it so.")
    if new.exists() and not overwrite:
        raise SelvaError(f"{new} already exists; choose another name or pass --overwrite.")
    if old.resolve() == new.resolve():
        raise SelvaError("OLD and NEW are the same file.")
    kind = kind_of(read_pt(old, "earlier-pack"))
    source = f"earlier SelVA pack: {old.name}"
    if kind in ("ti", "steering"):  # both record a variant and an info dict in their metadata
        from ..style.steering import SteeringVectors
        from ..style.textual_inversion import TextualInversion

        loaded = (TextualInversion if kind == "ti" else SteeringVectors).load(old)
        loaded.variant = variant or loaded.variant
        loaded.info["converted_from"] = source
        loaded.save(new)
    elif kind == "vocoder":
        from ..vocoder_tuning.checkpoint import metadata, read_tuned_vocoder, save_tuned_vocoder

        tuned = read_tuned_vocoder(old)
        meta = metadata(tuned.identity, mode=tuned.mode, steps=tuned.steps, variant=variant or "")
        save_tuned_vocoder(new, tuned.tensors, {**meta, "converted_from": source})
    elif kind == "lora":
        from ..adapters.format import load_adapter, save_adapter

        adapter = load_adapter(old)
        if adapter.base_residuals:
            raise SelvaError(f"{old.name} is a PiSSA adapter: it holds the base weights it changed, and "
                             f"becomes a plain adapter only against the model's own weights. Load the "
                             f".pt directly with SelVA LoRA Loader (it is converted there, exactly).")
        if variant:
            adapter.meta.variant = variant
        adapter.meta.extra["converted_from"] = source
        save_adapter(adapter, new, overwrite=overwrite)
    else:
        raise SelvaError(f"{old} is not a file of the earlier SelVA pack that can be converted (a "
                         f"textual inversion, BigVGAN, steering or LoRA .pt).")
    log.info("Converted %s -> %s", old, new)
    return new
