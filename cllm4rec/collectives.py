"""The collectives of the row-sharded tables, with the bytes each rank receives counted.

One `Collectives` per process wraps the default torch.distributed group (gloo on CPU ranks, nccl on
GPUs). With world size 1 every call returns its input and touches no process group. Each call adds
to `received[kind]` the bytes this rank receives from the other ranks:

  all_gather      (R − 1) × the input (every other rank's equal-sized tensor);
  all_to_all      exactly the rows the other ranks send it;
  reduce_scatter  (R − 1) / R × the input (a ring: R − 1 steps of one R-th).

These are the figures docs/cluster.md (section 2) compares, counted from the tensors passed here;
the index and size exchanges are counted too.
"""
from __future__ import annotations

from collections import Counter

import torch
import torch.distributed as torch_dist


class Collectives:
    """Collectives over the ranks of the default process group (module docstring)."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world
        self.received: Counter[str] = Counter()  # bytes by collective kind
        self.calls: Counter[str] = Counter()

    def _count(self, kind: str, nbytes: float) -> None:
        self.received[kind] += int(nbytes)
        self.calls[kind] += 1

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """[world, *shape]: every rank's `tensor` (all of one shape), in rank order."""
        if self.world == 1:
            return tensor[None]
        flat = tensor.reshape(-1).contiguous()
        out = flat.new_empty(self.world * flat.shape[0])
        torch_dist.all_gather_single(out, flat)
        self._count("all_gather", (self.world - 1) * _nbytes(flat))
        return out.view(self.world, *tensor.shape)

    def all_gather_rows(self, tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """(every rank's rows of tensor [n_r, ...] end to end in rank order [Σ n_r, ...], [n_r] per rank):
        the sizes first, then the rows, each rank's padded to the largest n_r."""
        if self.world == 1:
            return tensor, [tensor.shape[0]]
        counts = self.all_gather(torch.tensor([tensor.shape[0]], device=tensor.device))[:, 0].tolist()
        padded = tensor.new_zeros(max(counts), *tensor.shape[1:])
        padded[: tensor.shape[0]] = tensor
        gathered = self.all_gather(padded)
        return torch.cat([gathered[r, :n] for r, n in enumerate(counts)]), counts

    def all_to_all(self, tensor: torch.Tensor, send: list[int], receive: list[int]) -> torch.Tensor:
        """Rows of tensor [Σ send, ...] to the ranks, send[q] of them (in order) to rank q; returns the
        rows received, receive[q] from rank q, in rank order [Σ receive, ...]."""
        if self.world == 1:
            return tensor
        tensor = tensor.contiguous()
        out = tensor.new_empty(sum(receive), *tensor.shape[1:])
        torch_dist.all_to_all_single(out, tensor, output_split_sizes=receive, input_split_sizes=send)
        row = _nbytes(tensor[:1]) if tensor.shape[0] else _nbytes(out[:1])
        self._count("all_to_all", row * (sum(receive) - receive[self.rank]))
        return out

    def exchange_counts(self, send: list[int], device: torch.device) -> list[int]:
        """How many rows each rank will send this one (`send[q]`: rows this rank sends rank q)."""
        if self.world == 1:
            return list(send)
        return self.all_to_all(torch.tensor(send, device=device), [1] * self.world, [1] * self.world).tolist()

    def reduce_scatter(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks of tensor [world·n, ...], this rank's block of n rows [n, ...]."""
        if self.world == 1:
            return tensor
        tensor = tensor.contiguous()
        out = tensor.new_empty(tensor.shape[0] // self.world, *tensor.shape[1:])
        torch_dist.reduce_scatter_single(out, tensor)
        self._count("reduce_scatter", (self.world - 1) / self.world * _nbytes(tensor))
        return out

    def reset(self) -> None:
        self.received.clear()
        self.calls.clear()


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
