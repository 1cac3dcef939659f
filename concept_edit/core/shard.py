"""Sharding independent work across the processes of a launch (``accelerate launch``, torchrun).

Example::

    >>> from concept_edit.core.shard import Shard
    >>> sh = Shard.from_launch("cpu")            # one process: rank 0 of 1, no accelerate touched
    >>> mine = sh.mine(range(10))                # this rank's items: every world-th, from its rank
    >>> results = sh.gather(mine, [f(i) for i in mine])   # every rank gets all results, in order

Used by the audit: each rank generates every world-th batch of a sampling call, and the results
are gathered in the one-process order, so a sharded audit's numbers and images equal a one-process
run's (same seeds per image). Work that is not sampling (inversion, attack, classifier training)
runs on every rank and gives the same results there (seeded). A launch that cannot start is the
training loop's :class:`~concept_edit.core.trainloop.LaunchError`.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Shard:
    rank: int = 0
    world: int = 1

    @classmethod
    def from_launch(cls, device_type: str = "cpu") -> "Shard":
        from .trainloop import _accelerator, launched

        if not launched():
            return cls()
        acc = _accelerator(cpu=device_type == "cpu")
        return cls(acc.process_index, acc.num_processes)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, items) -> list:
        return list(items)[self.rank::self.world]

    def gather(self, keys: list, values: list) -> list:
        """All ranks' ``values`` (one per key of ``self.mine``), ordered by key."""
        if self.world == 1:
            return [v for _, v in sorted(zip(keys, values), key=lambda kv: kv[0])]
        import torch.distributed as dist

        parts = [None] * self.world
        dist.all_gather_object(parts, list(zip(keys, values)))
        return [v for _, v in sorted((kv for p in parts for kv in p), key=lambda kv: kv[0])]

    def total(self, value: int) -> int:
        """The sum of ``value`` over the ranks."""
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([int(value)], dtype=torch.long)
        dist.all_reduce(t)
        return int(t.item())
