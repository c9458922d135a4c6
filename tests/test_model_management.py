"""SelVA stages under ComfyUI's real model management (comfy.model_management, ModelPatcher),
imported in-process with ``--cpu``; skipped unless ``COMFYUI_DIR`` points at a ComfyUI checkout.

ComfyUI's modules are removed from ``sys.modules`` again afterwards, so the other tests keep
seeing "no ComfyUI" (nodes/comfy_compat.py binds ComfyUI at import time).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from comfy_pack import load_pack, pack_module
from test_patches import ScaleOutput
from test_pipeline import load, video

COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "comfy").is_dir(),
                                reason="set COMFYUI_DIR to a ComfyUI checkout to run")

GENERATION_STAGES = {"t5", "clip", "text_synch", "generator", "vae", "vocoder"}


def loaded_stages(residency) -> list[str]:
    """Names of the pipeline's stages in ComfyUI's loaded-model list (most recent first)."""
    ours = {id(p): name for name, p in residency.patchers.items()}
    return [ours[id(m)] for m in residency.mm.loaded_models() if id(m) in ours]


@pytest.fixture(scope="module")
def comfy():
    load_pack()  # bind the pack's comfy_compat to "no ComfyUI" before ComfyUI is importable
    saved_path, saved_modules = list(sys.path), dict(sys.modules)
    sys.path.insert(0, COMFYUI_DIR)
    sys.modules.pop("node_helpers", None)  # ComfyUI has a top-level module of that name too
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        import comfy.model_management as mm
        import comfy.model_patcher as mp
    finally:
        sys.path[:] = saved_path
        sys.modules.update(saved_modules)  # our node_helpers again
    try:
        yield mm, mp.ModelPatcher
        mm.unload_all_models()
    finally:
        for name in set(sys.modules) - set(saved_modules):
            del sys.modules[name]


@pytest.fixture
def backend(comfy):
    mm, patcher = comfy
    made = []

    def make(strategy="auto", device=None):
        made.append(pack_module("nodes.model_management").ComfyResidency(strategy, mm, patcher, device))
        return made[-1]

    yield make
    for residency in made:
        residency.release()


def _pipe(models_dir, residency):
    from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline

    return SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False),
                              residency=residency)


def _generate(pipe, seed=3):
    feats = pipe.extract_features(video(), 25.0, "a dog barking")
    return pipe.generate(feats, steps=2, seed=seed)


def test_stages_are_listed_with_their_real_size_and_audio_is_unchanged(comfy, backend, models_dir):
    mm, _ = comfy
    residency = backend()
    pipe = _pipe(models_dir, residency)
    audio = _generate(pipe)
    assert torch.equal(audio, _generate(load(models_dir))), "fp32 CPU output must be bit-identical"
    listed = {e.model.stage: e for e in mm.current_loaded_models if hasattr(e.model, "stage")}
    assert GENERATION_STAGES <= set(listed)
    for name in GENERATION_STAGES:
        module = pipe.manager.get(name)
        expected = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
        assert listed[name].model_memory() == expected > 0
        assert listed[name].model.model is module
        assert not listed[name].model.patches  # ComfyUI rewrites no weight of ours


def test_unload_all_models_evicts_and_the_next_run_loads_again(comfy, backend, models_dir):
    mm, _ = comfy
    residency = backend()
    pipe = _pipe(models_dir, residency)
    first = _generate(pipe)
    mm.unload_all_models()  # what ComfyUI's "Unload Models" / POST /free do
    assert loaded_stages(residency) == []
    assert torch.equal(first, _generate(pipe))
    assert GENERATION_STAGES <= set(loaded_stages(residency))


def test_patches_on_views_survive_eviction(comfy, backend, models_dir):
    mm, _ = comfy
    pipe = _pipe(models_dir, backend())
    patch = ScaleOutput(0.5)
    view = pipe.with_patches([patch])
    base = _generate(pipe)
    patched = _generate(view)
    mm.unload_all_models()
    assert torch.equal(patched, _generate(view)) and not torch.equal(base, patched)
    assert patch.attached == 2
    assert not pipe.manager.get("generator").final_layer._forward_hooks


def test_offload_to_cpu_unloads_each_stage_after_use_keep_in_vram_does_not(comfy, backend, models_dir):
    offload = _pipe(models_dir, backend("offload_to_cpu"))
    _generate(offload)
    assert loaded_stages(offload.manager.residency) == []
    keep = _pipe(models_dir, backend("keep_in_vram"))
    _generate(keep)
    assert GENERATION_STAGES <= set(loaded_stages(keep.manager.residency))


def test_unloading_one_stage_keeps_every_other_loaded_model(comfy, backend, models_dir):
    """A stage leaves ComfyUI's list alone: the other pipeline's stages and a model of ComfyUI's
    own stay loaded (unloading goes through free_memory with everything else kept)."""
    mm, patcher_class = comfy
    theirs = patcher_class(nn.Linear(4, 4), load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    mm.load_models_gpu([theirs])
    keep = _pipe(models_dir, backend("keep_in_vram"))
    _generate(keep)
    before = set(loaded_stages(keep.manager.residency))
    assert GENERATION_STAGES <= before
    offload = _pipe(models_dir, backend("offload_to_cpu"))
    _generate(offload)
    assert loaded_stages(offload.manager.residency) == []
    assert set(loaded_stages(keep.manager.residency)) == before
    keep.manager.residency.forget("vae")
    assert set(loaded_stages(keep.manager.residency)) == before - {"vae"}
    assert any(m is theirs for m in mm.loaded_models())


def test_auto_follows_comfyuis_vram_state(comfy, backend, monkeypatch):
    mm, _ = comfy
    residency = backend("auto")
    assert not residency.unloads_after_use()
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.LOW_VRAM)
    assert residency.unloads_after_use()
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    assert residency.unloads_after_use()
    assert not backend("keep_in_vram").unloads_after_use()


def test_release_and_replaced_stages_leave_comfyuis_list(comfy, backend, models_dir):
    mm, _ = comfy
    residency = backend()
    pipe = _pipe(models_dir, residency)
    _generate(pipe)
    old_vae = residency.patchers["vae"]
    pipe.manager.add_lazy("vae", lambda: pipe._builders.vae(need_encoder=True), pipe.stage_dtype("vae"))
    assert "vae" not in loaded_stages(residency)
    assert all(e.model is not old_vae for e in mm.current_loaded_models)
    pipe.release()
    assert loaded_stages(residency) == []


def test_an_extra_stage_is_managed_like_the_others(comfy, backend, models_dir):
    pipe = _pipe(models_dir, backend())
    tuned = pipe.manager.get("vocoder").__class__  # any module: a second vocoder instance
    pipe.manager.add_lazy("vocoder:tuned", lambda: pipe._builders.vocoder(), pipe.stage_dtype("vocoder"))
    view = pipe.with_patches(stages={"vocoder": "vocoder:tuned"})
    _generate(view)
    listed = loaded_stages(pipe.manager.residency)
    assert "vocoder:tuned" in listed and "vocoder" not in listed
    assert isinstance(pipe.manager.get("vocoder:tuned"), tuned)


# ------------------------------------------------------ a stand-in accelerator ("meta" device)
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("scale", torch.ones(3))


@pytest.fixture
def meta_gpu(comfy, monkeypatch):
    """ComfyUI treating the meta device as a GPU with plenty of free memory."""
    mm, _ = comfy
    plenty = 1 << 40
    monkeypatch.setattr(mm, "get_free_memory",
                        lambda dev=None, torch_free_too=False: (plenty, plenty) if torch_free_too else plenty)
    return torch.device("meta")


def test_a_gpu_stage_moves_whole_and_goes_back_to_its_master_copy(comfy, backend, meta_gpu):
    mm, _ = comfy
    residency = backend("auto", device=meta_gpu)
    net = Net().eval().requires_grad_(False)
    master = net.lin.weight.data
    residency.adopt("generator", net)
    with residency.use("generator", net):
        assert net.lin.weight.device == meta_gpu and net.scale.device == meta_gpu
    assert net.lin.weight.device == meta_gpu  # auto: stays loaded until ComfyUI needs the room
    with residency.use("generator", net):  # re-listing a loaded stage keeps it where it is
        assert net.lin.weight.device == meta_gpu
    mm.free_memory(1e30, meta_gpu)  # another model wants the whole card
    assert loaded_stages(residency) == []
    assert net.lin.weight.device.type == "cpu" and net.lin.weight.data_ptr() == master.data_ptr()


def test_nested_uses_keep_the_outer_stage_loaded(comfy, backend, meta_gpu):
    residency = backend("offload_to_cpu", device=meta_gpu)
    outer, inner = Net().eval(), Net().eval()
    residency.adopt("vae", outer)
    residency.adopt("vocoder", inner)
    with residency.use("vae", outer):
        with residency.use("vocoder", inner):
            assert outer.lin.weight.device == meta_gpu and inner.lin.weight.device == meta_gpu
        assert outer.lin.weight.device == meta_gpu and inner.lin.weight.device.type == "cpu"
    assert outer.lin.weight.device.type == "cpu"
    assert loaded_stages(residency) == []


def test_loader_uses_comfyuis_model_management_when_present(comfy, models_dir, monkeypatch):
    mm, patcher = comfy
    from node_helpers import env_for_models, run_node

    compat = pack_module("nodes.comfy_compat")
    loader = pack_module("nodes.loader")
    monkeypatch.setattr(compat, "model_management", mm)
    monkeypatch.setattr(compat, "ModelPatcher", patcher)
    env_for_models(monkeypatch, models_dir)
    loader.clear_cache()
    try:
        (pipe,) = run_node("SelvaModelLoader", variant="tiny_16k", precision="fp32",
                           offload_strategy="auto")
        assert type(pipe.manager.residency).__name__ == "ComfyResidency"
        _generate(pipe)
        assert GENERATION_STAGES <= set(loaded_stages(pipe.manager.residency))
    finally:
        loader.clear_cache()
    assert all(not hasattr(e.model, "stage") for e in mm.current_loaded_models)


def test_with_a_gpu_offload_device_the_stage_stays_on_the_gpu(comfy, backend, meta_gpu, monkeypatch):
    """--highvram (generator) / --gpu-only (all): ComfyUI's offload device is the GPU itself."""
    mm, _ = comfy
    freed = []
    real_free = mm.free_memory
    monkeypatch.setattr(mm, "free_memory", lambda need, dev, *a, **k: freed.append(dev) or real_free(need, dev, *a, **k))
    monkeypatch.setattr(mm, "unet_offload_device", lambda: meta_gpu)
    residency = backend("offload_to_cpu", device=meta_gpu)
    net = Net().eval()
    residency.adopt("generator", net)
    assert net.lin.weight.device == meta_gpu and freed[0] == meta_gpu  # room made first
    with residency.use("generator", net):
        assert loaded_stages(residency) == ["generator"]
    assert loaded_stages(residency) == [] and net.lin.weight.device == meta_gpu
