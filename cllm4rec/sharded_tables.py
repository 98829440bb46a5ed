"""Row-sharded ID tables behind the `TableAccess` a forward takes (docs/cluster.md, section 2.2).

Each rank's model holds, in place of each table, its own rows as the Parameter (`layouts` maps each to
its `RowShards`); the optimizer holds those shards and their Adam state only. In a forward:

- a batch's rows come from their owners (`row_exchange.RowRequest`: indices, then rows), and so do the
  other set's anchor rows (the request reused for the same rows);
- the tied item head is the sharded item softmax (cllm4rec/sharded_softmax.py) and scoring gives
  `ShardScores` (every rank's users against this rank's items) for the sharded top-k;

after backward, `apply()` sends each fetched row's gradient back to its owner, in the order of the
fetches (the same on every rank), which adds it, beside the item head's gradient, into its shard's
`.grad` (through a `TableGradients`). No rank holds a table's other rows or their state at any time.
"""
from __future__ import annotations

import torch

from cllm4rec.collectives import Collectives
from cllm4rec.row_exchange import Fetched, FetchRows, RowRequest
from cllm4rec.row_shards import RowShards
from cllm4rec.sharded_scores import ShardScores
from cllm4rec.sharded_softmax import sharded_item_softmax_nll_sum
from cllm4rec.table_access import TableAccess
from cllm4rec.table_gradients import TableGradients


class ShardedTables(TableAccess):
    """This rank's shards of the ID tables, reached collectively (module docstring).

    `weight`: this rank's batch weight in the current step, set by the engine: 0 for a padding batch,
    which then sends no rows to the item head (the head's item-row gradients sum every rank's rows, so
    a rank's loss cannot be weighted after the fact)."""

    def __init__(self, layouts: dict[torch.nn.Parameter, RowShards], comm: Collectives):
        super().__init__(TableGradients())
        self.layouts, self.comm = layouts, comm
        self.weight = 1.0
        self.fetched: list[Fetched] = []  # this step's differentiable fetches, in order
        self.requests: dict[RowShards, tuple[torch.Tensor, RowRequest]] = {}  # the last request per layout

    def request(self, table: torch.nn.Parameter, index: torch.Tensor) -> RowRequest:
        """The request for rows index [U] of `table`: the last one made for the same index tensor and
        layout (a batch's rows, then its anchors), else a new one."""
        layout = self.layouts[table]
        last = self.requests.get(layout)
        if last is None or last[0] is not index:
            last = self.requests[layout] = (index, RowRequest.of(index, layout, self.comm))
        return last[1]

    def rows(self, table: torch.nn.Parameter, index: torch.Tensor) -> torch.Tensor:
        request = self.request(table, index)
        if not (table.requires_grad and torch.is_grad_enabled()):
            return request.fetch(table)
        self.check_applied()
        fetched = Fetched(table, request)
        self.fetched.append(fetched)
        return FetchRows.apply(table, fetched)

    def anchors(self, table: torch.nn.Parameter, index: torch.Tensor) -> torch.Tensor:
        return self.request(table, index).fetch(table)

    def item_nll_sum(self, hidden: torch.Tensor, table: torch.nn.Parameter, target_rows: torch.Tensor,
                     target_items: torch.Tensor, gradient_dtype: torch.dtype | None) -> torch.Tensor:
        if self.weight == 0:  # a padding batch: no rows, no targets
            hidden, target_rows, target_items = hidden[:0], target_rows[:0], target_items[:0]
        return sharded_item_softmax_nll_sum(hidden, table, target_rows, target_items, self.layouts[table], self.comm,
                                            sink=self.gradients, gradient_dtype=gradient_dtype)

    def item_logits(self, hidden: torch.Tensor, table: torch.nn.Parameter) -> ShardScores:
        """Every rank's rows of hidden [B_r, K] against this rank's items: `ShardScores` [Σ B_r, J_r]."""
        everyone, counts = self.comm.all_gather_rows(hidden)
        return ShardScores(everyone.float() @ table.float().t(), counts, self.layouts[table])

    def check_applied(self) -> None:
        """Raise if a backward handed over row gradients that were never sent to their owners (`apply()`)."""
        if any(fetched.grad is not None for fetched in self.fetched):
            raise RuntimeError("ShardedTables: the last step's row gradients were never applied; call apply() "
                               "after backward() and before the optimizer step")
        self.gradients.check_applied()

    def apply(self) -> None:
        """After backward, on every rank: each fetch's row gradients to their owners (zeros where backward
        handed none), added with the item head's gradient into the shards' `.grad`."""
        for fetched in self.fetched:
            request = fetched.request
            grad = fetched.grad
            if grad is None:
                grad = torch.zeros(len(request.order), fetched.table.shape[1], device=fetched.table.device)
            self.gradients.add_rows(fetched.table, request.asked, request.return_gradients(grad))
        self.fetched.clear()
        self.requests.clear()
        self.gradients.apply()
