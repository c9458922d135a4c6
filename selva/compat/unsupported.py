"""The one place that says which earlier-pack files mean something this pack cannot reproduce.

Each check raises a :class:`SelvaError` naming what the file needs and what to do instead. When
the pack gains one of these modes, relax its check here (and only here).
"""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import SelvaError

# Textual-inversion injection modes of the earlier pack that our textual inversion reproduces:
# "suffix" replaced the LAST n_tokens CLIP text positions, which is our path "clip".
TI_INJECT_MODES = {"suffix": "clip"}


def check_ti(source: str, inject_mode: str, *, training: bool = False) -> str:
    """Our textual-inversion path for an earlier ``inject_mode``, or a clear refusal (``training``:
    a sweep experiment asks for it rather than a trained file holding it)."""
    if inject_mode in TI_INJECT_MODES:
        return TI_INJECT_MODES[inject_mode]
    if training:
        raise SelvaError(
            f"{source} uses inject_mode {inject_mode!r} (learned tokens right after the start "
            f"token), which this version cannot train: it puts learned tokens at the end of the "
            f"prompt sequence (the earlier 'suffix' mode). Use inject_mode 'suffix' for it, or "
            f"remove the experiment.")
    raise SelvaError(
        f"{source} was trained with inject_mode {inject_mode!r}: its tokens replace the CLIP text "
        f"positions right after the start token. This pack only puts learned tokens at the end of "
        f"the prompt sequence (the earlier 'suffix' mode), so these tokens would land where they "
        f"were never trained. Train them again with SelVA Textual Inversion Trainer (or "
        f"`python -m selva textual-inversion`) on the same dataset.")


def check_vocoder(source: str, payload: Mapping[str, Any]) -> None:
    """Refuse an earlier fine-tuned vocoder that carries GAFilter layers."""
    if payload.get("has_gafilter"):
        raise SelvaError(
            f"{source} is a BigVGAN fine-tuned with GAFilter layers (kernel "
            f"{payload.get('gafilter_kernel_size', '?')}), extra filters this pack's vocoder does "
            f"not have; its weights only sound right with them. Fine-tune the vocoder again with "
            f"SelVA BigVGAN Trainer (or `python training/train_vocoder.py`), or use one trained without "
            f"GAFilter.")
