"""How a forward reaches the ID tables (docs/architecture.md, section 2): where it reads a batch's rows
and the other set's (detached) anchor rows, how it scores the tied item head, and where the tables'
gradients go. `CLLM4Rec.forward` takes one as its `tables` argument.

`TableAccess` reads whole tables held by this process: their gradients go to autograd's `.grad`
(`LOCAL_TABLES`, the default), or into a `TableGradients`' kept buffers, which `apply()` then puts into
`.grad` (the plain engine). `cllm4rec.sharded_tables.ShardedTables` reads tables whose rows are
sharded over the ranks.
"""
from __future__ import annotations

import torch

from cllm4rec.losses import item_softmax_nll_sum
from cllm4rec.table_gradients import TableGradients, gather_rows


class TableAccess:
    """Whole tables on this process; `gradients`: the kept buffers their gradients go to (None: autograd)."""

    def __init__(self, gradients: TableGradients | None = None):
        self.gradients = gradients

    def rows(self, table: torch.nn.Parameter, index: torch.Tensor) -> torch.Tensor:
        """Rows [U, K] (fp32, differentiable) of `table` at the distinct rows index [U]."""
        return gather_rows(table, index, self.gradients)

    def anchors(self, table: torch.nn.Parameter, index: torch.Tensor) -> torch.Tensor:
        """Rows [U, K] of `table` at index [U], detached (the fixed side of the MR term)."""
        return table.detach()[index]

    def item_nll_sum(self, hidden: torch.Tensor, table: torch.nn.Parameter, target_rows: torch.Tensor,
                     target_items: torch.Tensor, gradient_dtype: torch.dtype | None) -> torch.Tensor:
        """The item softmax's NLL sum with `table` as the head (`losses.item_softmax_nll_sum`)."""
        return item_softmax_nll_sum(hidden, table, target_rows, target_items, sink=self.gradients,
                                    gradient_dtype=gradient_dtype)

    def item_logits(self, hidden: torch.Tensor, table: torch.nn.Parameter) -> torch.Tensor:
        """Item logits [B, J] (fp32) of hidden [B, K] with `table` as the head."""
        return hidden.float() @ table.float().t()

    def apply(self) -> None:
        """After backward: the gradients collected outside autograd into the tables' `.grad`."""
        if self.gradients is not None:
            self.gradients.apply()


LOCAL_TABLES = TableAccess()  # whole tables, gradients to autograd (holds no state)
