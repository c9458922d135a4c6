"""Residency backends: the CPU master copy, and the manager delegating to a pluggable backend."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from comfyui_selva.selva import offload as O
from comfyui_selva.selva import residency as R


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("scale", torch.full((3,), 2.0))

    def forward(self, x):
        return self.lin(x) * self.scale


def _net() -> Net:
    return Net().eval().requires_grad_(False)


# ------------------------------------------------------------------------------- HostCopy
# A CPU "device copy" stands in for the GPU one: the slots really point at other tensors.
CPU = torch.device("cpu")


def test_upload_installs_copies_and_drop_points_back_at_the_masters():
    net = _net()
    weight, param, scale = net.lin.weight.data, net.lin.weight, net.scale
    host = R.HostCopy(net)
    host.upload(CPU)
    assert host.on_device == CPU
    assert net.lin.weight.data_ptr() != weight.data_ptr() and net.scale is not scale
    assert torch.equal(net.lin.weight, weight)
    host.drop()
    assert host.on_device is None
    assert net.lin.weight is param, "the Parameter object must stay (hooks and patches hold it)"
    assert net.lin.weight.data_ptr() == weight.data_ptr() and net.scale is scale


def test_in_place_change_on_the_device_is_written_back():
    net = _net()
    host = R.HostCopy(net)
    host.upload(CPU)
    with torch.no_grad():
        net.lin.weight.add_(1.0)
    expected = net.lin.weight.detach().clone()
    host.drop()
    assert torch.equal(net.lin.weight, expected)


def test_untouched_weights_are_not_copied_back():
    net = _net()
    host = R.HostCopy(net)
    master = net.lin.weight.data
    before = master._version
    host.upload(CPU)
    host.drop()
    assert master._version == before  # no copy_ into the master


def test_buffers_registered_while_on_the_device_become_the_master():
    net = _net()
    host = R.HostCopy(net)
    host.upload(CPU)
    net.register_buffer("scale", torch.full((3,), 5.0))  # like the generator's rotary tables
    net.register_buffer("extra", torch.ones(2))
    host.drop()
    assert torch.equal(net.scale, torch.full((3,), 5.0))
    host.upload(CPU)  # the new buffer is part of the next upload
    assert torch.equal(net.extra, torch.ones(2))
    host.drop()
    assert torch.equal(net.scale, torch.full((3,), 5.0))


def test_inference_tensors_are_handled():
    with torch.inference_mode():
        net = _net()
        host = R.HostCopy(net)
        host.upload(CPU)
        out = net(torch.ones(1, 4))
        host.drop()
        assert torch.equal(net(torch.ones(1, 4)), out)


def test_forward_hooks_survive_upload_and_drop():
    net = _net()
    calls = []
    handle = net.lin.register_forward_hook(lambda m, i, o: calls.append(1))
    host = R.HostCopy(net)
    host.upload(CPU)
    net(torch.ones(1, 4))
    host.drop()
    net(torch.ones(1, 4))
    handle.remove()
    assert calls == [1, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_master_is_pinned_and_the_gpu_copy_goes_away():  # pragma: no cover - GPU only
    net = _net()
    host = R.HostCopy(net, pin=True)
    assert net.lin.weight.is_pinned()
    host.upload(torch.device("cuda"))
    assert net.lin.weight.is_cuda
    out = net(torch.ones(1, 4, device="cuda"))
    host.drop()
    assert net.lin.weight.is_pinned() and not net.lin.weight.is_cuda
    assert torch.allclose(net(torch.ones(1, 4)), out.cpu())


# -------------------------------------------------------------------------- built-in backends
def test_cpu_master_uploads_only_inside_use_and_never_empties_the_cache(monkeypatch):
    flushed = []
    monkeypatch.setattr(R, "empty_cache", lambda d: flushed.append(d))
    meta = torch.device("meta")  # an "accelerator" on a CPU-only machine
    backend = R.CpuMaster(meta, pin=False)
    net = _net()
    backend.adopt("net", net)
    for _ in range(3):
        with backend.use("net", net):
            assert net.lin.weight.device == meta and net.scale.device == meta
        assert net.lin.weight.device == CPU
    assert flushed == []
    backend.release()
    assert flushed == [meta]


def test_cpu_master_is_a_no_op_on_the_cpu():
    backend = R.CpuMaster(CPU)
    net = _net()
    weight = net.lin.weight.data
    backend.adopt("net", net)
    with backend.use("net", net):
        assert net.lin.weight.data_ptr() == weight.data_ptr()


def test_nested_use_of_one_stage_keeps_it_on_the_device():
    meta = torch.device("meta")
    backend = R.CpuMaster(meta, pin=False)
    net = _net()
    backend.adopt("net", net)
    with backend.use("net", net):
        with backend.use("net", net):
            pass
        assert net.lin.weight.device == meta
    assert net.lin.weight.device == CPU


class Recording:
    """A residency backend that records what the manager asks of it."""

    def __init__(self):
        self.device = CPU
        self.log = []

    def adopt(self, name, module):
        self.log.append(("adopt", name, module.lin.weight.dtype))

    @contextlib.contextmanager
    def use(self, name, module):
        self.log.append(("use", name))
        yield
        self.log.append(("done", name))

    def forget(self, name):
        self.log.append(("forget", name))

    def release(self):
        self.log.append(("release",))


def test_manager_delegates_to_a_pluggable_backend():
    backend = Recording()
    assert isinstance(backend, R.Residency)
    mgr = O.OffloadManager(device=CPU, offload=False, residency=backend)
    mgr.add_lazy("net", _net, torch.bfloat16)
    assert backend.log == []  # nothing built before first use
    with mgr.use("net") as net:
        assert net.lin.weight.dtype == torch.bfloat16
    mgr.add("ready", _net(), torch.float32)
    mgr.release()
    assert backend.log == [("adopt", "net", torch.bfloat16), ("use", "net"), ("done", "net"),
                           ("adopt", "ready", torch.float32), ("forget", "net"), ("release",)]
    assert not mgr.is_loaded("net") and mgr.is_loaded("ready")
    with mgr.use("net"):  # a released pipeline builds the stage again
        pass
    assert backend.log[-3] == ("adopt", "net", torch.bfloat16)


def test_replacing_a_stage_forgets_the_old_module():
    backend = Recording()
    mgr = O.OffloadManager(device=CPU, offload=False, residency=backend)
    mgr.add_lazy("vae", _net, torch.float32)
    mgr.get("vae")
    mgr.add_lazy("vae", _net, torch.float32)  # e.g. the VAE swapped for one with its encoder
    assert ("forget", "vae") in backend.log and not mgr.is_loaded("vae")


def test_default_backend_follows_the_offload_decision():
    assert isinstance(O.OffloadManager(device=CPU, offload=True).residency, R.CpuMaster)
    assert isinstance(O.OffloadManager(device=CPU, offload=False).residency, R.OnDevice)


# ------------------------------------------------------------------- the nodes' choice of backend
def test_outside_comfyui_the_loader_keeps_the_core_policy(model):
    from comfy_pack import pack_module

    assert pack_module("nodes.model_management").comfy_residency("auto") is None
    assert isinstance(model.manager.residency, (R.OnDevice, R.CpuMaster))


def test_comfy_backend_rejects_an_unknown_strategy():
    from types import SimpleNamespace

    from comfy_pack import pack_module
    from comfyui_selva.selva.errors import SelvaError

    mm = SimpleNamespace(get_torch_device=lambda: CPU)
    with pytest.raises(SelvaError, match="offload strategy 'sometimes'"):
        pack_module("nodes.model_management").ComfyResidency("sometimes", mm, object)
