"""What loaders attach to a model without changing it: generator patches and stage overrides.

ComfyUI graphs branch: a LoRA loader's output feeds one Sampler while the loader's input feeds
another. So a loader never touches the networks it was given. It returns a *view* of the
pipeline (:meth:`SelvaPipeline.with_patches`) that shares every network with the original and
carries, in addition:

* generator patches: objects whose :meth:`GeneratorPatch.attach` installs something on the
  generator (forward hooks, usually) for the duration of one use and removes it afterwards;
* stage overrides: a logical stage (``"vocoder"``) mapped to another stage of the same offload
  manager (a tuned vocoder registered beside the base one).

Patches live on the view, not on the networks, so they survive offloading and the pipeline
releasing and rebuilding its networks: they are attached again at every use. A patch whose
effect is zero (strength 0) must attach nothing, so the output equals the plain model's bit for
bit.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator, Protocol, Sequence, runtime_checkable

from torch import nn


@runtime_checkable
class GeneratorPatch(Protocol):
    """Something attached to the generator while it runs (LoRA deltas, steering vectors)."""

    def attach(self, generator: nn.Module) -> ContextManager[None]:
        """Install on ``generator`` for the duration of the returned context, then remove."""
        ...


@contextlib.contextmanager
def attached(generator: nn.Module, patches: Sequence[GeneratorPatch]) -> Iterator[nn.Module]:
    """``generator`` with every patch installed, in order; all removed on exit (errors too)."""
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch.attach(generator))
        yield generator
