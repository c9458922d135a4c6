"""Flan-T5 text encoder: per-token features of the prompt for SelVA's text-conditioned sync encoder.

Only the encoder half of ``google/flan-t5-base`` is used. Its ``model.safetensors`` holds the
whole encoder-decoder; transformers' ``T5EncoderModel`` reads the shared embedding and the
``encoder.*`` tensors and leaves the rest, which we accept only under an explicit rule
(:data:`DROPPED_PREFIXES`), so that any other leftover or missing tensor is reported as a wrong
file instead of silently running on random weights.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence, Union

import torch
from torch import nn

from ..errors import SelvaError
from ..models.state_dicts import mismatch_error, problem_report

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json",)
# Decoder-side tensors of the full checkpoint: not part of the encoder, dropped on purpose.
DROPPED_PREFIXES = ("decoder.", "lm_head.")


class T5TextEncoder(nn.Module):
    """T5 encoder + tokenizer; ``encode`` matches the reference's ``encode_text_t5``."""

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, directory: Union[str, Path]) -> "T5TextEncoder":
        """Load from a local snapshot of ``google/flan-t5-base`` (nothing is downloaded here)."""
        directory = Path(directory)
        _require_files(directory)
        from transformers import PreTrainedTokenizerFast, T5EncoderModel

        try:
            # The generic fast tokenizer runs tokenizer.json exactly as written. transformers 5's
            # T5 tokenizer class rebuilds parts of the pipeline (its pre-tokenizer's prefix-space
            # rule), which can tokenize differently from the file and from the reference.
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
        except Exception as e:
            raise SelvaError(f"Cannot read the T5 tokenizer in {directory}: {e}") from e
        weights = directory / WEIGHTS_FILE
        try:
            # mismatched shapes are collected (not raised) so that the error can name them
            with _quiet_transformers():
                model, info = T5EncoderModel.from_pretrained(
                    str(directory), local_files_only=True, dtype=torch.float32,
                    output_loading_info=True, ignore_mismatched_sizes=True)
        except Exception as e:
            raise SelvaError(f"Cannot load the T5 encoder from {weights}: {e}. Is it the "
                             f"google/flan-t5-base file, complete? Delete it to download it again.") from e
        _check_loading_info(info, weights)
        log.debug("T5 encoder loaded from %s (%d tensors dropped by rule)", weights,
                  len(info.get("unexpected_keys", ())))
        return cls(model, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token features ``(B, L, 768)`` and the bool mask ``(B, L)`` of real (non-pad) tokens.

        Padded to the longest prompt and truncated at the tokenizer's ``model_max_length`` (512),
        as the reference does.
        """
        if isinstance(texts, str):
            raise SelvaError("T5TextEncoder.encode takes a list of prompts, not a single string.")
        batch = self.tokenizer(list(texts), max_length=self.tokenizer.model_max_length, padding=True,
                               truncation=True, return_tensors="pt")
        device = self.device
        input_ids = batch.input_ids.to(device)
        attention_mask = batch.attention_mask.to(device)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden, attention_mask == 1


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar: the decoder tensors it lists as
    unexpected are dropped on purpose, and _check_loading_info reports real problems."""
    from transformers.utils import logging as tlog

    verbosity, bar = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(verbosity)
        if bar:
            tlog.enable_progress_bar()


def _require_files(directory: Path) -> None:
    if not directory.is_dir():
        raise SelvaError(f"T5 snapshot folder not found: {directory}")
    for name in (CONFIG_FILE, WEIGHTS_FILE, *TOKENIZER_FILES):
        if not (directory / name).is_file():
            raise SelvaError(f"T5 snapshot {directory} lacks {name}: download google/flan-t5-base again.")


def _check_loading_info(info: dict, weights: Path) -> None:
    """Fail on anything but the decoder-side tensors the encoder does not use."""
    # transformers lists each wrong shape as (key, shape in the file, shape in the network)
    report = problem_report(
        missing=info.get("missing_keys") or (),
        unexpected=[k for k in info.get("unexpected_keys", ()) if not k.startswith(DROPPED_PREFIXES)],
        wrong_shape=[tuple(k[:3]) for k in info.get("mismatched_keys") or ()])
    problems = [report] if report else []
    if info.get("error_msgs"):
        problems.append(f"errors {list(info['error_msgs'])[:3]}")
    if problems:
        raise mismatch_error("; ".join(problems), source=str(weights), what="flan-t5-base encoder",
                             hint="Is it google/flan-t5-base's model.safetensors?")
