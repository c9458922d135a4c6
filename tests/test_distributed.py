"""selva.distributed: the one torchrun context that training and batch generation share."""
from __future__ import annotations

import torch

from comfy_pack import pack_module

D = pack_module("selva.distributed")


def test_the_context_is_read_from_torchruns_variables():
    assert D.context_from({}) is D.SINGLE and not D.SINGLE.active and D.SINGLE.is_main
    ctx = D.context_from({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.active, ctx.is_main) == (2, 4, 0, True, False)
    assert D.context_from({"WORLD_SIZE": "2", "RANK": "1"}).local_rank == 1  # one machine: local = global


def test_rows_are_dealt_round_robin_and_every_row_goes_to_exactly_one_rank():
    rows = list(range(11))
    shares = [D.DistContext(rank=r, world_size=3).shard(rows) for r in range(3)]
    assert shares[0] == [0, 3, 6, 9] and shares[2] == [2, 5, 8]
    assert sorted(x for s in shares for x in s) == rows


def test_one_process_needs_no_process_group():
    t = torch.tensor([1.5])
    assert D.SINGLE.all_reduce_sum(t) is t and t.item() == 1.5
    assert D.SINGLE.all_gather_objects([1, 2]) == [1, 2] and D.SINGLE.broadcast_object("x") == "x"
    assert D.SINGLE.any_flag(True) and not D.SINGLE.any_flag(False)


def test_each_rank_takes_its_own_gpu_unless_a_device_was_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    ctx = D.DistContext(rank=3, world_size=4, local_rank=3)
    assert [D.device_for(ctx, r) for r in (None, "", "cuda")] == ["cuda:1"] * 3
    assert D.device_for(ctx, "cpu") == "cpu" and D.device_for(ctx, "cuda:0") == "cuda:0"
    assert D.device_for(D.SINGLE, None) is None  # one process: the loader's own choice
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.device_for(ctx, None) is None
