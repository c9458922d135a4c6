"""The one place that says which earlier-pack files mean something this pack cannot reproduce.

Today every mode of the earlier files is reproduced (prefix and suffix textual inversion,
GAFilter vocoders, per-position steering); what is left refuses values that pack never wrote.

Each check raises a :class:`SelvaError` naming what the file needs and what to do instead. When
the pack gains one of these modes, relax its check here (and only here).
"""
from __future__ import annotations

from ..errors import SelvaError

# Textual-inversion injection modes of the earlier pack and our path for each: both replace CLIP
# text positions, which is our path "clip" with the same inject_mode ("suffix": the last n_tokens
# positions, "prefix": those right after the start token).
TI_INJECT_MODES = {"suffix": "clip", "prefix": "clip"}


def check_ti(source: str, inject_mode: str) -> str:
    """Our textual-inversion path for an earlier ``inject_mode``, or a clear refusal of a mode that
    pack never had (a damaged or foreign file)."""
    if inject_mode in TI_INJECT_MODES:
        return TI_INJECT_MODES[inject_mode]
    raise SelvaError(
        f"{source} was trained with inject_mode {inject_mode!r}, which neither the earlier pack nor this "
        f"one has (they know {', '.join(TI_INJECT_MODES)}). Use one of those, or train the tokens again "
        f"with SelVA Textual Inversion Trainer.")
