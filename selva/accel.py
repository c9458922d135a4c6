"""Accelerator settings for speed: TF32 matmuls and ``torch.compile`` of the generator.

Both only matter on CUDA and change nothing on the CPU (parity there is exact as before).

* TF32: the official demo switches TF32 on for matmuls and cuDNN convolutions. Here it is on
  only while a SelVA stage runs (:func:`tf32`) and restored afterwards, so other models in the
  same ComfyUI process keep their own settings. Under bf16 / fp16 it has no effect.
* Attention always goes through ``scaled_dot_product_attention``, so PyTorch picks its flash or
  memory-efficient kernels by itself on CUDA (flash for bf16 / fp16, memory-efficient for fp32).
* ``compile``: the generator's velocity function is wrapped with ``torch.compile``. The first
  generation compiles it (tens of seconds; not measured on a GPU here); a new clip duration or
  batch size changes the input shapes and compiles once more, after which those sizes are
  symbolic and further durations and batch sizes reuse the compiled code. Attaching a LoRA / steering patch changes the graph too
  (one more compile per set of patches; up to ``torch._dynamo.config.cache_size_limit`` are kept).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

import torch

log = logging.getLogger(__name__)


@contextlib.contextmanager
def tf32(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """TF32 matmuls and cuDNN convolutions on ``device`` (CUDA) for the block, then restored."""
    if not enabled or torch.device(device).type != "cuda":
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


_COMPILED_ATTR = "_selva_compiled_predict_flow"


def compiled_velocity(generator: torch.nn.Module) -> Callable:
    """The generator's ``predict_flow``, compiled once per generator object (a rebuilt generator,
    e.g. after ComfyUI unloaded it, compiles again)."""
    fn = getattr(generator, _COMPILED_ATTR, None)
    if fn is None:
        log.info("Compiling the SelVA generator (torch.compile, backend inductor): the first run is slow")
        fn = torch.compile(generator.predict_flow, backend="inductor")
        object.__setattr__(generator, _COMPILED_ATTR, fn)
    return fn
