"""Who am I in the job: rank, world size, node, DataLoader worker; how many threads to use.

``from_env`` is the one place that reads torchrun's variables (and
``OMP_NUM_THREADS``); everything else takes them as explicit arguments.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1   # processes torchrun started on this node
    group_rank: int = 0         # this node's index among torchrun's nodes
    omp_num_threads: str | None = None  # OMP_NUM_THREADS as set for this process (user or torchrun)

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} / world_size {self.world_size}: need 0 <= rank < world_size")
        if not 0 <= self.local_rank < self.local_world_size <= self.world_size or self.group_rank < 0:
            raise ValueError(f"local rank {self.local_rank} / local world size {self.local_world_size} / "
                             f"world size {self.world_size} / group rank {self.group_rank}: need "
                             f"0 <= local rank < local world size <= world size and group rank >= 0")

    @property
    def multi_node(self) -> bool:
        return self.world_size > self.local_world_size


def from_env(environ=None) -> World:
    """torchrun's RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / GROUP_RANK (and OMP_NUM_THREADS),
    or a single process when unset.

    Without LOCAL_WORLD_SIZE (a launcher other than torchrun) every rank is taken to share this
    machine: too few threads per process is slower, too many thrashes.
    """
    env = os.environ if environ is None else environ
    world_size = _int(env, "WORLD_SIZE", 1)
    return World(_int(env, "RANK", 0), world_size, _int(env, "LOCAL_RANK", 0),
                 _int(env, "LOCAL_WORLD_SIZE", world_size), _int(env, "GROUP_RANK", 0),
                 env.get("OMP_NUM_THREADS") or None)


def _int(env, name: str, default: int) -> int:
    value = env.get(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name}={value!r}: not an integer; torchrun sets it, "
                         f"unset it to run one process") from None


def intra_op_threads(world: World, cpus: int, on_this_host: int) -> tuple[int | None, str]:
    """(threads to set, or None to leave torch's choice; why) for one CPU process.

    ``on_this_host``: ranks running on this machine (counted by hostname, so two torchrun
    "nodes" on one machine count 2 even though each has LOCAL_WORLD_SIZE 1).  Each process
    otherwise uses every core and they thrash: 2 loopback nodes ran 2.5x slower than 2 local
    processes.  OMP_NUM_THREADS wins when set (torchrun sets it to 1 itself when
    --nproc_per_node > 1 and it is unset).
    """
    if world.omp_num_threads is not None:
        return None, f"OMP_NUM_THREADS={world.omp_num_threads}"
    sharing = max(1, world.local_world_size, on_this_host)
    return max(1, cpus // sharing), f"{cpus} cpus / {sharing} process{'es' if sharing > 1 else ''} on this host"


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
