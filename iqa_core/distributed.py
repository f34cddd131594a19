"""Scoring beyond one process: ``torchrun`` and ``torch.distributed``, as the engine (iqa_core.engine) uses them.

``torchrun --standalone --nproc_per_node=N -m iqa_core batch ...`` (or ``--nnodes`` and a rendezvous endpoint
on a cluster) starts N processes with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`init_world` joins
them in a process group (gloo on the CPU, NCCL on GPUs, one GPU per local rank). Work is split by reference group
(:func:`assign_groups`, deterministic), each rank writes its own shard file and rank 0 merges them
(iqa_core.store). Without torchrun everything here is a no-op for a world of one.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["World", "world_from_env", "init_world", "local_device", "barrier", "broadcast", "gather",
           "assign_groups"]


@dataclass(frozen=True)
class World:
    """This process's place among the processes torchrun started (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"${name}={value!r} is not a number; torchrun sets it, unset it to run alone") from None


def world_from_env() -> World:
    """The world torchrun describes in ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``."""
    return World(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))


def local_device(device: str | torch.device, world: World) -> torch.device:
    """``cuda`` without an index means this process's GPU (``cuda:LOCAL_RANK``) in a distributed run."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and world.is_distributed:
        return torch.device("cuda", world.local_rank)
    return device


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def init_world(device: str | torch.device = "cpu") -> World:
    """Join the process group torchrun prepared (once per process): NCCL for a CUDA device, gloo otherwise."""
    world = world_from_env()
    if world.is_distributed and not dist.is_initialized():
        device = local_device(device, world)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy)
    return world


def barrier(world: World) -> None:
    if world.is_distributed:
        dist.barrier()


def broadcast(world: World, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not world.is_distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(world: World, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not world.is_distributed:
        return [value]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def assign_groups(sizes: Sequence[int], world_size: int) -> list[int]:
    """The rank that scores each reference group: groups in order, each to the rank with the least work so far
    (ties to the lowest rank). The same sizes give the same shards on every rank and in every run."""
    load = [0] * world_size
    owners = []
    for size in sizes:
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners.append(rank)
        load[rank] += size
    return owners
