"""Several processes, one run: ``torchrun`` support with DistributedDataParallel.

Introduced in chapter 6 (*Training on a GPU (or not)*).

Under ``torchrun --nproc-per-node=N -m twotower run ...`` every process builds the
same global batch (it depends only on seed and step) and takes its rows ``rank::N``; DDP
averages the gradients. The loss of each process is rescaled so that the averaged
gradient is exactly the gradient of the global batch's mean loss, whatever the number of
targets each process happens to hold. Only rank 0 logs, writes checkpoints and results.
NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from twotower.errors import TwotowerError


@dataclass(frozen=True)
class Dist:
    """This process's place in the run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def current() -> Dist:
    """The process group's rank and size (or a single process)."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(),
                    int(os.environ.get("LOCAL_RANK", 0)))
    return Dist()


def init_from_env() -> Dist:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Returns:
        This process's :class:`Dist`; a single process when ``WORLD_SIZE`` is unset
        or 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_available():
        raise TwotowerError("this torch build has no torch.distributed; run without "
                            "torchrun")
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return current()


def device_for(d: Dist, device: str) -> str:
    """Under torchrun on GPUs, ``auto``/``cuda`` means this process's own GPU."""
    if d.active and torch.cuda.is_available() and device in ("auto", "cuda"):
        return f"cuda:{d.local_rank}"
    return device


def shard_rows(rows, d: Dist):
    """This process's rows of a global batch: ``rows[rank::world]``."""
    if not d.active:
        return rows
    if len(rows) < d.world:
        raise TwotowerError(f"global batch of {len(rows)} is smaller than the "
                            f"{d.world} processes; raise --batch-size")
    return rows[d.rank::d.world]


def all_sum(value: float, device: torch.device, d: Dist) -> float:
    """Sum of ``value`` over all processes (fp64)."""
    if not d.active:
        return value
    return float(all_sum_tensor(torch.tensor([value], device=device,
                                             dtype=torch.float64), d).item())


def all_sum_tensor(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum of a tensor over all processes, left on the device (no wait for it)."""
    if d.active:
        value = value.clone()  # all_reduce works in place
        dist.all_reduce(value)
    return value


def global_count(n_local: int, device: torch.device, d: Dist) -> int:
    """Sum of ``n_local`` over all processes."""
    return int(round(all_sum(float(n_local), device, d)))


def gather_objects(value, d: Dist) -> list:
    """``[value of rank 0, value of rank 1, ...]`` on every process (small objects,
    such as random-number-generator states)."""
    if not d.active:
        return [value]
    out = [None] * d.world
    dist.all_gather_object(out, value)
    return out


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


