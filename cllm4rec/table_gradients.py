"""The ID tables' gradients in dense buffers kept from step to step (single-process training).

Without this, every step builds each trained table's gradient afresh: autograd's backward of
`table[index]` makes a zero-filled [N, K] tensor with the U gathered rows written in, the fused item
softmax a fresh [J, K] head gradient, and the two are summed in a further pass over [J, K]. On a CPU a
fresh buffer costs a page fault per 4 KiB page on first touch (~60–75 ms per 230 MB), several times
the cost of writing it. Here:

- `GatherRows` hands the gathered rows' gradient [U, K] to a `TableGradients` instead of returning a
  dense table gradient;
- the fused item softmax (`cllm4rec.losses`) writes its head gradient into the table's kept buffer
  (`take`) and hands it over the same way;
- after backward, `TableGradients.apply()` makes the kept buffer the table's `.grad` (first the head
  gradient, if any, which fills it whole; else the buffer with last step's rows zeroed again) and adds
  the row gradients in place.

The gradients are the same dense tensors autograd would give (summed in the same order). Only for an
optimizer that reads `.grad` after `backward()` and `apply()`: the plain engine's, whose
`TableAccess` (cllm4rec/table_access.py) holds a `TableGradients`, and the row-sharded engine's, whose
`ShardedTables` adds each rank's shards' row gradients, received from the other ranks, into one.
Without `apply()` the tables get no gradient. DeepSpeed's ZeRO-3 partitions the tables and reduces
gradients through its own autograd hooks, so its engine keeps none.
"""
from __future__ import annotations

import torch

ALL_ROWS = None  # a buffer's dirty rows when a head gradient filled it whole


class TableGradients:
    """Collects the tables' gradients during backward; `apply()` puts them into `.grad` afterwards."""

    def __init__(self) -> None:
        self.buffers: dict[torch.nn.Parameter, torch.Tensor] = {}
        self.dirty: dict[torch.nn.Parameter, list[torch.Tensor] | None] = {}  # rows written since zeroed
        self.taken: set[torch.nn.Parameter] = set()  # tables whose buffer a head gradient holds until `apply()`
        self.dense: list[tuple[torch.nn.Parameter, torch.Tensor]] = []  # (table, its head gradient)
        self.rows: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []  # (table, index, grad)

    def check_applied(self) -> None:
        """Raise if a backward pass handed over gradients that `apply()` never put into `.grad` (they
        would be lost silently): called by every forward that uses this sink."""
        if self.dense or self.rows:
            raise RuntimeError("TableGradients: the last backward's table gradients were never applied; call "
                               "apply() after backward() and before the optimizer step (PlainEngine does)")

    def take(self, table: torch.nn.Parameter) -> torch.Tensor | None:
        """The table's buffer, to be overwritten whole by a head gradient and handed back through
        `add_dense` (contents undefined); None if a head gradient already holds it this step."""
        self.check_applied()
        if table in self.taken:
            return None
        self.taken.add(table)
        self.dirty[table] = ALL_ROWS
        return self._buffer(table)

    def add_dense(self, table: torch.nn.Parameter, grad: torch.Tensor) -> None:
        """Called in backward: a dense gradient [N, K] of the whole table (its buffer, or another tensor)."""
        self.dense.append((table, grad))

    def add_rows(self, table: torch.nn.Parameter, index: torch.Tensor, grad: torch.Tensor) -> None:
        """Called in backward: gradient grad [U, K] of table[index] (index [U] distinct rows)."""
        self.rows.append((table, index, grad.to(table.dtype)))

    def apply(self) -> None:
        """After backward: every collected gradient into its table's `.grad` (head gradients first)."""
        for table, grad in self.dense:
            if table.grad is None:
                table.grad = grad
            else:
                table.grad.add_(grad)
        for table, index, grad in self.rows:
            if table.grad is None:
                table.grad = self._zeroed(table)
            if table.grad is self.buffers.get(table) and self.dirty[table] is not ALL_ROWS:
                self.dirty[table].append(index)
            table.grad.index_add_(0, index, grad)
        self.dense.clear()
        self.rows.clear()
        self.taken.clear()

    def keep_only(self, tables: list[torch.nn.Parameter]) -> None:
        """Drop the buffers of every other table (when training switches to another table set)."""
        self.buffers = {t: b for t, b in self.buffers.items() if any(t is kept for kept in tables)}
        self.dirty = {t: rows for t, rows in self.dirty.items() if t in self.buffers}

    def _buffer(self, table: torch.nn.Parameter) -> torch.Tensor:
        if table not in self.buffers:
            self.buffers[table] = torch.zeros_like(table, memory_format=torch.contiguous_format)
            self.dirty.setdefault(table, [])
        return self.buffers[table]

    def _zeroed(self, table: torch.nn.Parameter) -> torch.Tensor:
        """The table's buffer, all zeros (only the rows written since it was last zeroed are cleared)."""
        buffer = self._buffer(table)
        dirty = self.dirty[table]
        if dirty is ALL_ROWS:
            buffer.zero_()
        else:
            for index in dirty:
                buffer.index_fill_(0, index, 0.0)
        self.dirty[table] = []
        return buffer


class GatherRows(torch.autograd.Function):
    """table[index] (fp32) whose backward hands the [U, K] row gradient to `sink` instead of returning a
    dense table gradient; `index` must hold distinct rows (each row's occurrences summed before)."""

    @staticmethod
    def forward(ctx, table: torch.nn.Parameter, index: torch.Tensor, sink: TableGradients) -> torch.Tensor:
        ctx.table, ctx.sink = table, sink
        ctx.save_for_backward(index)
        return table[index].float()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        ctx.sink.add_rows(ctx.table, index, grad)
        return None, None, None


def gather_rows(table: torch.Tensor, index: torch.Tensor, sink: TableGradients | None) -> torch.Tensor:
    """Rows [U, K] (fp32) of `table`; their gradient goes to `sink` when one is given and the table trains."""
    if sink is None or not (table.requires_grad and torch.is_grad_enabled()):
        return table[index].float()
    sink.check_applied()
    return GatherRows.apply(table, index, sink)
