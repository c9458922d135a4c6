"""Pipeline views: patches and stage overrides attach to a view, never to the shared networks."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.hooks import Hooks, Interrupted

from test_pipeline import feats, pipe, video  # noqa: F401  (fixtures)


class ScaleOutput:
    """Multiplies the final layer's output: a patch with a visible, removable effect."""

    def __init__(self, factor: float):
        self.factor = factor
        self.attached = 0

    @contextlib.contextmanager
    def attach(self, generator):
        self.attached += 1
        handle = generator.final_layer.register_forward_hook(lambda m, i, out: out * self.factor)
        try:
            yield
        finally:
            handle.remove()


def test_view_patches_apply_to_the_view_only(pipe, feats):
    base = pipe.generate(feats, steps=2, seed=3)
    patch = ScaleOutput(0.5)
    view = pipe.with_patches([patch])
    patched = view.generate(feats, steps=2, seed=3)
    assert patch.attached == 1 and not torch.equal(base, patched)
    # the base pipeline and its generator carry nothing afterwards
    assert pipe.generator_patches == ()
    assert torch.equal(base, pipe.generate(feats, steps=2, seed=3))
    assert not pipe.manager.get("generator").final_layer._forward_hooks


def test_views_chain_and_survive_release(pipe, feats):
    first, second = ScaleOutput(0.5), ScaleOutput(0.5)
    chained = pipe.with_patches([first]).with_patches([second])
    assert chained.generator_patches == (first, second)
    once = chained.generate(feats, steps=2, seed=3)
    chained.release()  # networks rebuilt on next use; the patches live on the view
    assert torch.equal(once, chained.generate(feats, steps=2, seed=3))
    assert first.attached == 2 and second.attached == 2


def test_patch_removed_when_sampling_fails(pipe, feats):
    view = pipe.with_patches([ScaleOutput(2.0)])
    with pytest.raises(Interrupted):  # raised inside the generator's use, after attaching
        view.generate(feats, steps=2, hooks=Hooks(interrupted=lambda: True))
    assert not pipe.manager.get("generator").final_layer._forward_hooks


def test_stage_override_serves_the_view(pipe, feats):
    base = pipe.generate(feats, steps=2, seed=3)
    tuned = copy.deepcopy(pipe.manager.get("vocoder"))
    with torch.no_grad():
        for p in tuned.parameters():
            p.mul_(0.9)
    pipe.manager.add("vocoder:test", tuned, pipe.stage_dtype("vocoder"))
    view = pipe.with_patches(stages={"vocoder": "vocoder:test"})
    assert not torch.equal(base, view.generate(feats, steps=2, seed=3))
    assert torch.equal(base, pipe.generate(feats, steps=2, seed=3))
    with pytest.raises(SelvaError, match="no such stage"):
        pipe.with_patches(stages={"vocoder": "vocoder:missing"})
