"""How one ID table's rows are split over ranks (docs/cluster.md, section 2.2): rank r of R owns the
contiguous rows [⌊n·r/R⌋, ⌊n·(r+1)/R⌋), so shards differ in size by at most one row, a row's owner is
one binary search away, and the rows of ranks 0..R−1 laid end to end are the table in order."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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
