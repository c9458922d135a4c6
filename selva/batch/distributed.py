"""torchrun support: which rows this process takes, and merging every process's results.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. Rows are dealt out round-robin
(row ``i`` to rank ``i % world``), each rank runs on its own GPU (``cuda:LOCAL_RANK``) or on the
CPU, and rank 0 gathers the results at the end. Only Python objects are exchanged, so the
process group is always gloo (works between machines over TCP and needs no GPU).
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# Ranks finish their shares at different times and wait for the slowest at the end.
GATHER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        return list(items[self.rank::self.world])


def ranks_from_env(env: Optional[dict] = None) -> Ranks:
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    return Ranks(rank=rank, world=world, local_rank=int(env.get("LOCAL_RANK", str(rank))))


def device_for(ranks: Ranks, requested: Optional[str]) -> Optional[str]:
    """``requested`` as given; under torchrun without one, each rank's own GPU when there are GPUs."""
    if requested or not ranks.distributed:
        return requested
    import torch

    if torch.cuda.is_available():
        return f"cuda:{ranks.local_rank % torch.cuda.device_count()}"
    return None


def init(ranks: Ranks) -> None:
    if not ranks.distributed:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=GATHER_TIMEOUT)
    log.info("Rank %d of %d (local rank %d)", ranks.rank, ranks.world, ranks.local_rank)


def all_gather(ranks: Ranks, items: list) -> list:
    """Every rank's ``items``, concatenated (on every rank)."""
    if not ranks.distributed:
        return list(items)
    import torch.distributed as dist

    parts: list = [None] * ranks.world
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def finish(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
