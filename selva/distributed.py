"""Several processes under ``torchrun``: who this process is, its share, and what they exchange.

``torchrun --nproc_per_node N`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; one process
is one :class:`DistContext`. Training sums gradients over the processes (NCCL on CUDA, gloo
elsewhere), so every process keeps identical weights and the result matches one process that
sees the whole global batch. Batch generation deals rows out round-robin and only exchanges
Python objects at the end, so it joins a gloo group whatever the device. Only rank 0 writes the
files a run ends with.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
T = TypeVar("T")

# Batch ranks finish their shares at different times and wait for the slowest at the end.
OBJECTS_TIMEOUT = datetime.timedelta(days=7)


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

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share: item ``i`` goes to rank ``i % world_size``."""
        return list(items[self.rank::self.world_size])

    def all_gather_objects(self, items: list) -> list:
        """Every process's ``items``, concatenated in rank order (on every process)."""
        if not self.active:
            return list(items)
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, items)
        return [x for part in parts for x in part]

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
        for p, summed in zip(params, flat.split([g.numel() for g in grads])):
            p.grad = summed.view_as(p).clone()

    def any_flag(self, flag: bool) -> bool:
        """True on every process when it is true on any (stop requests, skips)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.collective_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return bool(t.item() > 0)

    def broadcast_object(self, obj: Any) -> Any:
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


def context_from(env: Optional[Mapping[str, str]] = None) -> DistContext:
    """The context torchrun describes in ``env`` (the process environment by default); joins nothing."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank = int(env.get("RANK", "0"))
    return DistContext(rank=rank, world_size=world, local_rank=int(env.get("LOCAL_RANK", str(rank))))


def from_environment(*, objects_only: bool = False) -> DistContext:
    """:func:`context_from` the environment, joining the process group once.

    ``objects_only``: the processes exchange only Python objects (batch results), so the group
    is gloo on every device and waits long for the slowest rank; otherwise (training) NCCL
    on CUDA unless ``SELVA_DIST_BACKEND=gloo``.
    """
    ctx = context_from()
    if not ctx.active or dist.is_initialized():
        return ctx
    if objects_only:
        dist.init_process_group(backend="gloo", timeout=OBJECTS_TIMEOUT)
    else:
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("SELVA_DIST_BACKEND") != "gloo" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ctx.local_rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend)
    log.info("Joined the %s process group: rank %d of %d (local rank %d)", dist.get_backend(),
             ctx.rank, ctx.world_size, ctx.local_rank)
    return ctx


def device_for(ctx: DistContext, requested: Optional[str]) -> Optional[str]:
    """Under torchrun, each process's own GPU (``cuda:LOCAL_RANK``) when none or plain ``cuda``
    was asked for; an explicit device (``cpu``, ``cuda:1``) as given."""
    if ctx.active and torch.cuda.is_available() and requested in (None, "", "cuda"):
        return f"cuda:{ctx.local_rank % torch.cuda.device_count()}"
    return requested


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
