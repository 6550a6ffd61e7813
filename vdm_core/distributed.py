"""One training process or many: the torchrun environment, the process group, and each rank's share of a batch.

``torchrun --nproc-per-node N …`` starts N copies of the training command and gives each ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE`` (and the rendezvous address); ``setup`` joins them into one process group
with ``torch.distributed``'s default backend for the device (NCCL on CUDA, Gloo on CPU). Without those
variables the run is a plain single process and no group is made.

A step's global batch is the items at positions ``p … p + B − 1`` of the data's endless item sequence
(``vdm_core.data``: item ``n`` depends on the seed and ``n`` only). Rank ``r`` of ``W`` takes the contiguous
``B / W`` of them starting at ``p + r·B/W``, cut into ``accumulate`` micro-batches, so every item is read
by exactly one process and one DataLoader worker, and the union over ranks is the same whatever ``W``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class Group:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    device: torch.device
    owns_group: bool  # setup made the process group, so close destroys it

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, samples and logs."""
        return self.rank == 0

    def sum(self, t: Tensor) -> Tensor:
        """``t`` summed over all processes (in place; ``t`` itself in a single process)."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def pick_device(name: str | None, local_rank: int = 0) -> torch.device:
    """``name`` (``"cuda"`` means this machine's ``LOCAL_RANK``-th GPU under torchrun), else the accelerator
    torch finds (CUDA, XPU, MPS, …) or the CPU."""
    if name:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"--device {name!r} is not a device; use cpu, cuda, cuda:1, ...") from None
        found = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        if device.type != "cpu" and (found is None or found.type != device.type):
            raise ValueError(f"--device {name}: torch finds no {device.type} device here (it finds "
                             f"{found.type if found else 'only the CPU'}); use --device cpu or leave --device out")
        if device.type != "cpu" and device.index is None:
            device = torch.device(device.type, local_rank)
    elif torch.accelerator.is_available():
        device = torch.device(torch.accelerator.current_accelerator().type, local_rank)
    else:
        device = torch.device("cpu")
    if device.type != "cpu":
        torch.accelerator.set_device_index(device.index)
    return device


def setup(device_name: str | None) -> Group:
    """Join the torchrun process group if this process was started by torchrun, else run alone.

    A process group the caller made already is used as it is (and left open by ``close``).
    """
    env = os.environ
    if "WORLD_SIZE" not in env and not dist.is_initialized():
        return Group(0, 1, 0, 1, pick_device(device_name), owns_group=False)
    local_rank = int(env.get("LOCAL_RANK", 0))
    local_world = int(env.get("LOCAL_WORLD_SIZE", 1))
    device = pick_device(device_name, local_rank)
    owns = not dist.is_initialized()
    if owns:
        backend = dist.get_default_backend_for_device(device)
        dist.init_process_group(backend, device_id=device if device.type != "cpu" else None)
    return Group(dist.get_rank(), dist.get_world_size(), local_rank, local_world, device, owns)


def check_split(batch: int, world: int, accumulate: int) -> int:
    """The micro-batch size ``batch / (world · accumulate)``; a clear error when it is not a whole number."""
    parts = world * accumulate
    if batch < parts or batch % parts:
        raise ValueError(f"--batch {batch} (the global batch) must be a multiple of the {world} process(es) × "
                         f"--accumulate {accumulate} = {parts}; use --batch {max(parts, batch // parts * parts)}")
    return batch // parts


def micro_batches(position: int, batch: int, rank: int, world: int, accumulate: int) -> list[range]:
    """The item positions of rank ``rank``'s ``accumulate`` micro-batches in the step whose global batch
    starts at ``position``: contiguous, ``batch / (world · accumulate)`` items each."""
    b = check_split(batch, world, accumulate)
    first = position + rank * b * accumulate
    return [range(first + m * b, first + (m + 1) * b) for m in range(accumulate)]


class BatchPositions(torch.utils.data.Sampler):
    """Endless DataLoader ``batch_sampler``: this rank's micro-batches of item positions, step after step,
    from the global position ``start`` (what a resumed run has consumed already)."""

    def __init__(self, start: int, batch: int, rank: int, world: int, accumulate: int):
        check_split(batch, world, accumulate)
        self.start, self.batch, self.rank, self.world, self.accumulate = start, batch, rank, world, accumulate

    def __iter__(self):
        position = self.start
        while True:
            for positions in micro_batches(position, self.batch, self.rank, self.world, self.accumulate):
                yield list(positions)
            position += self.batch
