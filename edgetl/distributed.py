"""Backbone passes sharded over ranks with torch's own distributed engine (``torchrun``).

``torchrun --nproc-per-node N -m edgetl finetune DATA --out RUN`` (or several nodes through torchrun's
rendezvous) starts N copies; :func:`current_ranks` joins them into one process group (NCCL on CUDA, gloo on CPUs).
Every rank runs the pass over its own block of the records and writes its rows into the one cache entry, which
rank 0 creates and, once every rank's rows and bad-image lists are in, completes and renames into place (the
cache folder must be shared by the nodes).  Blocks start on multiples of the batch size, so every batch holds the
same images as in a single process and the entry is the same bytes.  Rank 0 then trains the head and writes the
run; the others stop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    def block(self, count: int, batch_size: int) -> range:
        """This rank's records: a contiguous block, cut on multiples of ``batch_size``."""
        batches = -(-count // batch_size)
        first, last = (batches * self.rank) // self.world, (batches * (self.rank + 1)) // self.world
        return range(min(first * batch_size, count), min(last * batch_size, count))

    def barrier(self) -> None:
        dist.barrier()

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def leave(self) -> None:
        """Leave the group (after the pass: only rank 0 goes on, alone)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def gather(self, value) -> list:
        """Every rank's ``value``, in rank order, on every rank."""
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values


def current_ranks() -> Ranks | None:
    """The process group torchrun describes in the environment (joined on first call), or None outside one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return Ranks(dist.get_rank(), dist.get_world_size())
