"""Serve a tuned vocoder as an extra stage of the pipeline's offload manager (the loader's core).

The tuned network is registered beside the base one as ``vocoder:<file digest>`` and a pipeline
view maps the logical ``vocoder`` stage to it (selva/patches.py): the model the loader was given
keeps the base vocoder, so other branches of a graph keep the base sound.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Union

import torch
from torch import nn

from ..errors import SelvaError
from .checkpoint import apply_tuned, identity_of, read_tuned_vocoder
from .gafilter import attach_gafilters, gafilter_kernel_size
from .params import clone_vocoder

log = logging.getLogger(__name__)

STAGE_PREFIX = "vocoder:"


def fresh_base_vocoder(pipe) -> nn.Module:
    """A new copy of the base vocoder on the CPU (never the shared module): built from its released
    file, or cloned from the loaded stage of a pipeline assembled by hand (no file builders)."""
    builders = getattr(pipe, "_builders", None)
    if builders is not None:
        return builders.vocoder()
    return clone_vocoder(pipe.manager.get("vocoder"), torch.device("cpu"))


def _build_tuned(pipe, path: Path, digest: str) -> nn.Module:
    tuned = read_tuned_vocoder(path)
    if tuned.digest != digest:
        raise SelvaError(f"{path} changed since it was loaded; run the BigVGAN Loader again.")
    base = fresh_base_vocoder(pipe)
    kernel = gafilter_kernel_size(tuned.tensors)
    if kernel:  # tuned with GAFilters: attach them (identity) before the tuned weights go in
        attach_gafilters(base, kernel)
    return apply_tuned(base, tuned)


def with_tuned_vocoder(pipe, path: Union[str, Path]):
    """A view of ``pipe`` whose vocoder has the tuned weights of ``path`` (``pipe`` is unchanged)."""
    path = Path(path)
    tuned = read_tuned_vocoder(path)
    tuned.check_fits(identity_of(pipe))
    name = f"{STAGE_PREFIX}{tuned.digest}"
    if not pipe.manager.has(name):
        digest = tuned.digest
        pipe.manager.add_lazy(name, lambda: _build_tuned(pipe, path, digest), pipe.manager.dtype("vocoder"))
        log.info("Tuned vocoder %s (%s, %d steps) registered as stage %s", path, tuned.mode, tuned.steps, name)
    return pipe.with_patches(stages={"vocoder": name})
