"""Whole-catalogue top-k over a row-sharded item table (docs/cluster.md, section 2.2).

Every rank scores every rank's users against its own item rows (`ShardScores`), keeps each user's
top-k of those (`topk_excluding` with `columns`), and sends each user's candidates to the user's
rank, which merges the R lists (`merge_topk`): the same items, in the same order and with the same tie
rule, as `topk_excluding` over the whole logits, while no rank holds more than its own items' scores.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from cllm4rec.collectives import Collectives
from cllm4rec.interactions import UserItems
from cllm4rec.metrics import PAD, merge_topk, topk_excluding
from cllm4rec.row_shards import RowShards


class ShardScores(NamedTuple):
    """One rank's part of a scoring pass over a row-sharded item table."""

    logits: torch.Tensor  # [T, J_r] fp32: every rank's rows, in rank order, against this rank's items
    counts: list[int]  # rows of each rank (Σ = T)
    layout: RowShards  # the item table's rows over the ranks

    def top_excluding(self, exclude: UserItems, rows: np.ndarray, k: int,
                      comm: Collectives) -> tuple[torch.Tensor, torch.Tensor]:
        """(items [M, min(k, J)], scores [M, min(k, J)]) of this rank's M users `rows`, best first, each
        user's `exclude` items left out, PAD / -inf past the last candidate (`topk_excluding`).
        Collective: every rank calls it on its own part of the same pass."""
        device = self.logits.device
        everyone, _ = comm.all_gather_rows(torch.as_tensor(np.asarray(rows, dtype=np.int64), device=device))
        lo, hi = self.layout.range(comm.rank)
        width = min(k, self.layout.largest)  # candidates per user from each rank (padded alike)
        local = topk_excluding(self.logits, exclude, everyone.cpu().numpy(), width, columns=(lo, hi))
        items = torch.full((local.shape[0], width), PAD, dtype=torch.int64, device=device)
        items[:, : local.shape[1]] = local
        values = self.logits.gather(1, (items - lo).clamp(min=0)).masked_fill(items == PAD, float("-inf"))
        mine = self.counts[comm.rank]
        # each user's candidates to the user's rank: from every rank, [R, M, width] in rank order
        received = [comm.all_to_all(t, self.counts, [mine] * comm.world).view(comm.world, mine, width)
                    for t in (items, values)]
        items, values = (t.permute(1, 0, 2).reshape(mine, comm.world * width) for t in received)
        return merge_topk(items, values, min(k, self.layout.n_rows))
