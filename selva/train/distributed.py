"""Data-parallel training with ``torch.distributed`` (``torchrun --nproc_per_node N ...``).

Each process trains on its share of every global batch; gradients are summed across processes
before the optimizer step, so every process keeps identical weights and the result matches one
process that sees the whole global batch. NCCL on CUDA, gloo elsewhere. Only rank 0 writes files.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over every process, in place (nothing to do for one process)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Sum every parameter's gradient over the processes (one flat buffer, one collective)."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def any_flag(self, flag: bool) -> bool:
        """True on every process when it is true on any (stop requests, skips)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.collective_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return bool(t.item() > 0)

    def broadcast_object(self, obj):
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @property
    def collective_device(self) -> torch.device:
        if self.active and dist.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


SINGLE = DistContext()


def from_environment() -> DistContext:
    """The context torchrun describes in the environment; joins the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("SELVA_DIST_BACKEND") != "gloo" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        log.info("Joined %s process group: rank %d of %d", backend, rank, world)
    return DistContext(rank=rank, world_size=world, local_rank=local)


def device_for(ctx: DistContext, requested: str | None) -> str | None:
    """Each process's own GPU under torchrun (``cuda:LOCAL_RANK``)."""
    if ctx.active and torch.cuda.is_available() and (requested in (None, "", "cuda")):
        return f"cuda:{ctx.local_rank}"
    return requested


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
