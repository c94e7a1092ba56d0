"""Who am I in the job: rank, world size, DataLoader worker.

``from_env`` is the one place that reads torchrun's variables; everything
else takes rank and world size as explicit arguments.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} / world_size {self.world_size}: need 0 <= rank < world_size")


def from_env(environ=None) -> World:
    """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or a single process when unset."""
    env = os.environ if environ is None else environ
    return World(_int(env, "RANK", 0), _int(env, "WORLD_SIZE", 1), _int(env, "LOCAL_RANK", 0))


def _int(env, name: str, default: int) -> int:
    value = env.get(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name}={value!r}: not an integer; torchrun sets it, "
                         f"unset it to run one process") from None


def resolve(rank: int | None, world_size: int | None) -> World:
    """Explicit values win; else an initialised torch.distributed group; else 0 / 1."""
    if rank is not None and world_size is not None:
        return World(rank, world_size)
    if rank is not None or world_size is not None:
        raise ValueError("pass both rank and world_size, or neither")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World(0, 1)


def worker() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker, (0, 1) in the main process."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)
