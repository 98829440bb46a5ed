"""A batch's rows of a row-sharded table, fetched from their owners and their gradients sent back
(docs/cluster.md, section 2.2, step 5) — TorchRec's row-wise sharding, over plain all-to-alls.

`RowRequest.of(index, layout, comm)` asks each row's owner for it: one all-to-all of the counts, one of
the row numbers (each rank then knows which of its rows the others need). `fetch` is one all-to-all of
the rows [U, K] (fp32); `return_gradients` sends the rows' gradients [U, K] back the same way, so each
owner adds them into its own rows only. Collective: every rank makes the same calls in the same order.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cllm4rec.collectives import Collectives
from cllm4rec.row_shards import RowShards


@dataclass
class RowRequest:
    """The rows of one table this rank needs from each rank, and those each rank needs from it."""

    order: torch.Tensor  # [U] positions of the requested rows, grouped by owner (ascending rank)
    send: list[int]  # rows requested of each rank (= rows received back from it)
    receive: list[int]  # rows each rank requests of this one
    asked: torch.Tensor  # [Σ receive] this rank's local row numbers the ranks ask for, in rank order
    comm: Collectives

    @classmethod
    def of(cls, index: torch.Tensor, layout: RowShards, comm: Collectives) -> "RowRequest":
        """The request for the rows index [U] (global row numbers) of a table split as `layout`."""
        owners = layout.owners(index)
        order = torch.argsort(owners, stable=True)
        send = torch.bincount(owners, minlength=comm.world).tolist()
        receive = comm.exchange_counts(send, index.device)
        asked = comm.all_to_all(index[order], send, receive) - layout.range(comm.rank)[0]
        return cls(order, send, receive, asked, comm)

    def fetch(self, shard: torch.Tensor) -> torch.Tensor:
        """The requested rows [U, K] (fp32, in the request's order) from every rank's shard [J_r, K]."""
        rows = self.comm.all_to_all(shard.detach()[self.asked].float(), self.receive, self.send)
        out = torch.empty_like(rows)
        out[self.order] = rows
        return out

    def return_gradients(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradients grad [U, K] of the requested rows, to their owners: the gradients [Σ receive, K]
        of this rank's rows `asked` (a row asked by several ranks comes once from each)."""
        return self.comm.all_to_all(grad[self.order].contiguous(), self.send, self.receive)


@dataclass
class Fetched:
    """One differentiable fetch of a step: the table, the request, and the rows' gradient [U, K] that
    backward hands over (None until then, or when the rows got none)."""

    table: torch.nn.Parameter
    request: RowRequest
    grad: torch.Tensor | None = None


class FetchRows(torch.autograd.Function):
    """`fetched.request.fetch(table)`, differentiable: backward hands the rows' gradient to `fetched`
    instead of autograd; their owners receive it after backward (`ShardedTables.apply`)."""

    @staticmethod
    def forward(ctx, table: torch.nn.Parameter, fetched: Fetched) -> torch.Tensor:
        ctx.fetched = fetched
        return fetched.request.fetch(table)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.fetched.grad = grad
        return None, None
