"""How the processes of one `accelerate launch` share a story's frames: batches, each rendered by one process.

A story's frames go through the pipeline in batches of `generate.frames_per_batch`. A frame's pixels depend on the
batch it was rendered in (kernels round differently at another batch size). A number cuts a story the same way
whatever the number of processes, so N processes write the same bytes as one. `auto` gives one process the whole
story in one call (at most AUTO_MAX frames a call: fewer calls keep the GPU busier) and N processes a batch each,
so its frames on N GPUs differ from one GPU's in the last bits of their rounding. Each process renders a contiguous
share of the batches; the results are gathered on every process (torch.distributed's object collectives, which
accelerate set up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

T = TypeVar("T")

AUTO_MAX = 8  # frames_per_batch auto: most frames of one call (a batch of 8 at 1024 px fits an 80 GB GPU)


def batch_size(frames: int, per_batch: int | Literal["auto"], processes: int = 1) -> int:
    """Frames per pipeline call for `frames` frames: `per_batch` as given, or for `auto` the fewest calls that keep
    each under AUTO_MAX and give every process one, evenly sized."""
    if per_batch != "auto":
        return per_batch
    calls = max(processes, -(-frames // AUTO_MAX), 1)
    return max(1, -(-frames // calls))


def frame_batches(indices: Sequence[int], per_batch: int) -> list[list[int]]:
    """`indices` cut into consecutive batches of at most `per_batch`."""
    return [list(indices[i : i + per_batch]) for i in range(0, len(indices), per_batch)]


@dataclass(frozen=True)
class Group:
    """The processes rendering together; one process (the default) needs no torch.distributed at all."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> Group:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous share of `items`; the first `len % size` processes take one more."""
        base, extra = divmod(len(items), self.size)
        start = self.rank * base + min(self.rank, extra)
        return list(items[start : start + base + (self.rank < extra)])

    def broadcast(self, obj: T, src: int = 0) -> T:
        """`obj` as process `src` has it (tensors inside must be on the CPU: they arrive on the device they left)."""
        if self.size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather(self, obj: T) -> list[T]:
        """Every process's `obj`, in rank order (CPU tensors only, as for `broadcast`)."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


SOLO = Group()
