"""How one ID table's rows are split over ranks (docs/cluster.md, section 2.2): rank r of R owns the
contiguous rows [⌊n·r/R⌋, ⌊n·(r+1)/R⌋), so shards differ in size by at most one row, a row's owner is
one binary search away, and the rows of ranks 0..R−1 laid end to end are the table in order. `RowSlices`
builds a rank's rows of each table straight from its seeded stream, never the whole table."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cllm4rec.table_init import TableInit


@dataclass(frozen=True)
class RowShards:
    """The row blocks of a table of `n_rows` rows over `world` ranks (each rank owns at least one row)."""

    n_rows: int
    world: int

    def __post_init__(self) -> None:
        if self.world < 1 or self.n_rows < self.world:
            raise ValueError(f"a table of {self.n_rows} rows cannot be split over {self.world} ranks: "
                             f"every rank must own at least one row")

    @property
    def bounds(self) -> list[int]:
        """[world + 1] row bounds: rank r owns rows bounds[r] .. bounds[r + 1] − 1."""
        return [self.n_rows * r // self.world for r in range(self.world + 1)]

    def range(self, rank: int) -> tuple[int, int]:
        """(first row, one past the last row) that `rank` owns."""
        bounds = self.bounds
        return bounds[rank], bounds[rank + 1]

    def sizes(self) -> list[int]:
        """Rows owned by each rank."""
        bounds = self.bounds
        return [b - a for a, b in zip(bounds, bounds[1:])]

    @property
    def largest(self) -> int:
        """Rows of the largest shard, ⌈n / world⌉ (what every rank sizes its row chunks by)."""
        return math.ceil(self.n_rows / self.world)

    def owners(self, index: torch.Tensor) -> torch.Tensor:
        """The rank owning each row of index [U] (global row numbers), int64 [U]."""
        starts = torch.tensor(self.bounds[1:-1], dtype=index.dtype, device=index.device)
        return torch.bucketize(index, starts, right=True)


def row_slice(rows: torch.Tensor, first_row: int, requires_grad: bool = True) -> nn.Parameter:
    """A Parameter of a table's rows [first_row, first_row + len(rows)), marked with its `first_row`
    (`cllm4rec.zero_params.held_elements`)."""
    param = nn.Parameter(rows, requires_grad=requires_grad)
    param.first_row = first_row
    return param


@dataclass(frozen=True)
class RowSlices:
    """Builds each ID table as rank `rank`'s rows of its `RowShards` over `world` ranks (the row-sharded
    engine's layout; a `TableMaker` of cllm4rec/model.py): only those rows are drawn from the table's seeded
    stream (cllm4rec/table_init.py), bit for bit rows [lo, hi) of the whole table. Collective-free."""

    rank: int
    world: int

    def make_table(self, init: TableInit, name: str, rows: int, dim: int, device: torch.device) -> nn.Parameter:
        """fp32 [hi - lo, dim] on `device`: rows [lo, hi) of table `name` [rows, dim]."""
        lo, hi = RowShards(rows, self.world).range(self.rank)
        table = torch.empty((hi - lo) * dim, dtype=torch.float32, device=device)
        init.write(name, lo * dim, table)
        return row_slice(table.view(hi - lo, dim), lo)
