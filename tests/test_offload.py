"""Device, precision and offload policy."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from comfyui_selva.selva import offload as O
from comfyui_selva.selva.errors import SelvaError


def test_pick_device_on_cpu_machine():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("accelerator present")
    assert O.pick_device().type == "cpu"
    with pytest.raises(SelvaError, match="CUDA"):
        O.pick_device("cuda")


def test_resolve_dtype():
    cpu = torch.device("cpu")
    assert O.resolve_dtype("fp32", cpu) == torch.float32
    assert O.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert O.resolve_dtype("fp16", cpu) == torch.float16
    with pytest.raises(SelvaError) as e:
        O.resolve_dtype("int8", cpu)
    assert str(e.value) == f"Unknown precision 'int8'; choose one of {', '.join(O.PRECISIONS)}."


def test_resolve_offload_rules():
    cuda = torch.device("cuda")
    assert O.resolve_offload("keep_in_vram", cuda, free=0) is False
    assert O.resolve_offload("offload_to_cpu", cuda, free=10**12) is True
    assert O.resolve_offload("auto", cuda, free=16 * 1024**3) is False
    assert O.resolve_offload("auto", cuda, free=8 * 1024**3) is True
    assert O.resolve_offload("offload_to_cpu", torch.device("cpu")) is False
    with pytest.raises(SelvaError, match="offload"):
        O.resolve_offload("sometimes", cuda)


class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))


def test_manager_stage_dtype_and_moves():
    # "meta" stands in for an accelerator: moving there is real, computing is not needed.
    rooms = []
    mgr = O.OffloadManager(device=torch.device("meta"), offload=True,
                           make_room=lambda n, d: rooms.append((n, d.type)))
    m = mgr.add("probe", Probe(), torch.bfloat16)
    assert m.w.dtype == torch.bfloat16 and not m.w.requires_grad and not m.training
    master = m.w.data
    with mgr.use("probe") as inner:
        assert inner is m and m.w.device.type == "meta"
    assert rooms == [(6, "meta")]  # 3 bf16 values, asked for before the upload
    assert m.w.device.type == "cpu" and m.w.data.data_ptr() == master.data_ptr()  # no copy back
    with pytest.raises(SelvaError, match="nope"):
        with mgr.use("nope"):
            pass
    assert O.module_bytes(Probe()) == 12


def test_keep_in_vram_moves_once_and_stays():
    mgr = O.OffloadManager(device=torch.device("meta"), offload=False)
    m = mgr.add("probe", Probe(), torch.float32)
    assert m.w.device.type == "meta"
    with mgr.use("probe"):
        assert m.w.device.type == "meta"
    assert m.w.device.type == "meta"


def test_lazy_stage_is_built_once_on_first_use():
    built = []
    mgr = O.OffloadManager(device=torch.device("cpu"), offload=False)
    mgr.add_lazy("probe", lambda: built.append(1) or Probe(), torch.float16)
    assert not mgr.is_loaded("probe") and built == []
    with mgr.use("probe") as m:
        assert m.w.dtype == torch.float16
    assert mgr.get("probe") is m and built == [1]


def test_release_after_use_applies_to_offload_to_cpu_on_a_cpu_only_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert O.releases_after_use("offload_to_cpu", cpu) is True
    assert O.releases_after_use("auto", cpu) is False
    assert O.releases_after_use("keep_in_vram", cpu) is False
    assert O.releases_after_use("offload_to_cpu", cuda) is False  # there it is a CPU master copy
    with pytest.raises(SelvaError, match=r"^Unknown offload strategy 'sometimes'; choose one of "):
        O.releases_after_use("sometimes", cpu)


def test_release_after_use_does_not_resolve_auto_a_second_time(monkeypatch):
    # Loading resolves "auto" once (it reads the free memory and logs the choice); asking whether
    # stages are released must not query and log it again.
    queried = []
    monkeypatch.setattr(O, "free_bytes", lambda device: queried.append(device) or 64 * 1024**3)
    assert O.releases_after_use("auto", torch.device("cuda")) is False
    assert queried == []


def test_release_after_use_rebuilds_a_lazy_stage_once_its_last_user_is_done():
    built = []
    mgr = O.OffloadManager(device=torch.device("cpu"), offload=False, release_after_use=True)
    mgr.add_lazy("probe", lambda: built.append(1) or Probe(), torch.float32)
    with mgr.use("probe") as outer:
        with mgr.use("probe") as inner:  # nested uses share one module and keep it
            assert inner is outer
        assert mgr.is_loaded("probe")
    assert not mgr.is_loaded("probe") and built == [1]
    with mgr.use("probe") as again:
        assert again is not outer
    assert built == [1, 1]
    # a stage handed over as a ready module cannot be rebuilt, so it stays
    ready = mgr.add("ready", Probe(), torch.float32)
    with mgr.use("ready"):
        pass
    assert mgr.get("ready") is ready


def test_bf16_falls_back_to_fp16_where_unsupported(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with caplog.at_level("WARNING"):
        assert O.resolve_dtype("bf16", torch.device("cuda")) == torch.float16
    assert "bf16" in caplog.text
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda *a: False)
    assert O.resolve_dtype("bf16", torch.device("mps")) == torch.float16
    assert O.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
