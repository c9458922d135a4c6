"""Idle networks give host memory back (mapped weight pages, freed heap), and never lose a value doing so."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from comfyui_selva.selva import host_memory as M
from comfyui_selva.selva import offload as O

from page_helpers import present_pages, whole_pages

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="mappings and pages are read from /proc (Linux)")


def mapped_net(tmp_path, width: int = 1024) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A network whose weights are a memory-mapped checkpoint's tensors, as the loaders build it."""
    want = {"0.weight": torch.randn(width, width), "0.bias": torch.randn(width),
            "1.weight": torch.randn(width, width), "1.bias": torch.randn(width)}
    torch.save(want, tmp_path / "net.pt")
    sd = torch.load(tmp_path / "net.pt", mmap=True, weights_only=True)
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(width, width), nn.Linear(width, width))
    net.load_state_dict(sd, assign=True)
    return net.requires_grad_(False), want


def read_all(net: nn.Module) -> None:
    for t in M.module_tensors(net):
        float(t.sum())


@linux_only
def test_idle_pages_leave_the_process_and_read_back_the_same_values(tmp_path):
    net, want = mapped_net(tmp_path)
    read_all(net)
    weight = net[0].weight
    first, last = whole_pages(weight)
    assert present_pages(weight) == last - first  # all resident after a read
    dropped = M.release_idle_pages(M.module_tensors(net))
    assert dropped >= 2 * weight.numel() * 4 - 2 * M.PAGE
    assert present_pages(weight) == 0 and present_pages(net[1].weight) == 0
    x = torch.randn(3, 1024)
    expected = torch.nn.functional.linear(torch.nn.functional.linear(x, want["0.weight"], want["0.bias"]),
                                          want["1.weight"], want["1.bias"])
    assert torch.equal(net(x), expected)  # mapped again from the file, unchanged
    assert present_pages(weight) > 0


@linux_only
def test_a_weight_written_in_place_keeps_its_values(tmp_path):
    net, want = mapped_net(tmp_path)
    read_all(net)
    net[0].weight.mul_(2)  # copy-on-write: these pages are this process's own now
    M.release_idle_pages(M.module_tensors(net))
    first, last = whole_pages(net[0].weight)
    assert present_pages(net[0].weight) == last - first
    assert present_pages(net[1].weight) == 0  # the clean neighbour still goes
    assert torch.equal(net[0].weight, want["0.weight"] * 2)  # dropping them would bring back the file's
    assert torch.equal(net[1].weight, want["1.weight"])


@linux_only
def test_a_partly_written_weight_keeps_exactly_its_written_pages(tmp_path):
    net, want = mapped_net(tmp_path)
    read_all(net)
    w = net[0].weight
    w[100:110] += 1
    M.release_idle_pages([w])
    # exactly the pages holding a written byte stay (counted before reading maps the rest again)
    rows = w[100:110]
    written = range(rows.data_ptr() // M.PAGE, (rows.data_ptr() + rows.numel() * 4 - 1) // M.PAGE + 1)
    first, last = whole_pages(w)
    assert present_pages(w) == len([p for p in written if first <= p < last])
    assert torch.equal(w[100:110], want["0.weight"][100:110] + 1)
    assert torch.equal(w[:100], want["0.weight"][:100]) and torch.equal(w[110:], want["0.weight"][110:])


def test_ordinary_memory_is_never_touched():
    tensors = [torch.randn(512, 1024), torch.randn(1024)]  # not file-backed: dropping would zero them
    before = [t.clone() for t in tensors]
    assert M.release_idle_pages(tensors) == 0
    assert all(torch.equal(a, b) for a, b in zip(tensors, before))


def test_tensor_span_covers_every_element_of_a_view():
    base = torch.zeros(64, 32)
    view = base[8:16, ::4]
    start, end = M.tensor_span(view)
    assert start == view.data_ptr()
    assert end == base[15, 28:29].data_ptr() + 4  # the last element's last byte
    assert M.tensor_span(torch.zeros(0)) is None
    assert M.tensor_span(torch.zeros(3, device="meta")) is None


@linux_only
def test_the_manager_gives_back_a_stage_s_pages_when_its_last_user_is_done(tmp_path):
    net, _ = mapped_net(tmp_path)
    mgr = O.OffloadManager(device=torch.device("cpu"), offload=False, return_idle_memory=True)
    mgr.add("net", net, torch.float32)
    weight = net[0].weight
    with mgr.use("net") as outer:
        read_all(outer)
        with mgr.use("net"):
            pass
        assert present_pages(weight) > 0  # the outer user still runs: its pages stay
    assert present_pages(weight) == 0 and mgr.is_loaded("net")
    keeping = O.OffloadManager(device=torch.device("cpu"), offload=False)
    keeping.add("net", net, torch.float32)
    with keeping.use("net") as again:
        read_all(again)
    assert present_pages(weight) > 0  # off by default


def test_idle_memory_goes_back_on_the_cpu_only():
    assert O.returns_idle_memory(torch.device("cpu"))
    assert not O.returns_idle_memory(torch.device("cuda"))  # the network runs from device memory there
    assert not O.returns_idle_memory(torch.device("mps"))


def anonymous_resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


@linux_only
def test_trim_heap_returns_memory_freed_in_the_middle_of_the_heap():
    # Chunks of 64 KiB come from the C heap (not from their own mmap), and the last one kept
    # stops the heap from simply shrinking at its end: freed, they stay reserved until trimmed.
    chunks = [torch.ones(16 * 1024) for _ in range(3200)]  # 200 MiB
    guard = torch.ones(16 * 1024)
    del chunks
    before = anonymous_resident_bytes()
    if not M.trim_heap():
        pytest.skip("this C library has no malloc_trim")
    assert before - anonymous_resident_bytes() > 100 * 1024**2
    assert float(guard.sum()) == 16 * 1024


def test_the_manager_trims_the_heap_before_and_after_each_outermost_use(monkeypatch):
    trims = []
    monkeypatch.setattr(M, "trim_heap", lambda: trims.append(1) or True)
    mgr = O.OffloadManager(device=torch.device("cpu"), offload=False, return_idle_memory=True)
    mgr.add("net", nn.Linear(4, 4), torch.float32)
    with mgr.use("net"):
        assert len(trims) == 1  # what the previous stage freed goes before this one runs
        with mgr.use("net"):
            pass
        assert len(trims) == 1  # not between nested uses
    assert len(trims) == 2
    mgr.release()
    assert len(trims) == 3
    quiet = O.OffloadManager(device=torch.device("cpu"), offload=False)
    quiet.add("net", nn.Linear(4, 4), torch.float32)
    with quiet.use("net"):
        pass
    assert len(trims) == 3  # off unless asked for


def test_mapping_holding_finds_the_one_mapping_that_holds_the_whole_span():
    mappings = [(0x1000, 0x3000), (0x5000, 0x9000)]
    assert M.mapping_holding((0x5000, 0x9000), mappings) == (0x5000, 0x9000)
    assert M.mapping_holding((0x6000, 0x6100), mappings) == (0x5000, 0x9000)
    assert M.mapping_holding((0x2000, 0x5800), mappings) is None  # runs across a gap
    assert M.mapping_holding((0x8000, 0x9001), mappings) is None  # past the end
    assert M.mapping_holding((0x0800, 0x0900), mappings) is None  # before the first
    assert M.mapping_holding((0x4000, 0x4100), []) is None


@linux_only
def test_nothing_is_dropped_where_pagemap_hides_which_pages_were_written(tmp_path, monkeypatch):
    net, want = mapped_net(tmp_path)
    read_all(net)
    net[0].weight.mul_(2)
    monkeypatch.setattr(M, "_page_flags", lambda first, last: np.zeros((last - first) // M.PAGE, "<u8"))
    M._pagemap_tells_written_pages.cache_clear()
    try:
        assert M.release_idle_pages(M.module_tensors(net)) == 0
    finally:
        M._pagemap_tells_written_pages.cache_clear()
    assert present_pages(net[1].weight) > 0
    assert torch.equal(net[0].weight, want["0.weight"] * 2)
