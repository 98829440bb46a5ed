"""The item softmax over a row-sharded item table (docs/cluster.md, section 2.2; docs/method.md §5, §9.2).

Rank r holds the item rows [lo_r, hi_r) of the table (`RowShards`) and its own token rows (data
parallelism: every rank has other tokens). One call, on every rank together:

1. every rank's hidden rows [M_r, K] and target pairs are all-gathered: T = Σ M_r rows on every rank;
2. each rank scores the T rows against its own items only, in the row chunks and item blocks of
   `cllm4rec.losses.softmax_chunks`; per chunk, each row's (max, Σ exp) over this rank's items is
   all-gathered and combined, so every rank holds each row's log-sum-exp over the whole catalogue
   before it forms the gradients;
3. each rank computes the gradient of its own item rows from all T rows (it stays on the rank), and
   its share of every row's hidden-state gradient and target logit; one reduce-scatter sums those
   over the ranks and hands each rank its own rows.

No rank ever holds more than its J/R item rows: the traffic is O(T·K), independent of J, and the
stored exps stay under `block_elements` per rank (rows are chunked by the largest shard). As in
`FusedItemSoftmaxNLL`, both gradients are formed in the forward pass; backward scales them by the
gradient of this rank's loss, so that gradient must be the same on every rank (the row-sharded
engine's losses are unweighted: a padding batch sends no rows instead).
"""
from __future__ import annotations

import torch

from cllm4rec.collectives import Collectives
from cllm4rec.losses import LOGIT_BLOCK_BYTES, Combine, products_dtype, scaled_gradients, softmax_chunks
from cllm4rec.row_shards import RowShards
from cllm4rec.table_gradients import TableGradients


def sharded_item_softmax_nll_sum(hidden: torch.Tensor, shard: torch.Tensor, target_rows: torch.Tensor,
                                 target_items: torch.Tensor, layout: RowShards, comm: Collectives, *,
                                 sink: TableGradients | None = None, gradient_dtype: torch.dtype | None = None,
                                 block_elements: int | None = None) -> torch.Tensor:
    """This rank's Σ over its target pairs (r, j) of −log softmax(hidden @ tableᵀ)[r, j], the table being
    split over the ranks as `layout` says and this rank holding rows lo..hi−1 as shard [hi − lo, K].

    hidden [M, K] (this rank's rows), target_rows [P] (into hidden) and target_items [P] (global item
    numbers): as `cllm4rec.losses.item_softmax_nll_sum`, whose loss and gradients, summed over the
    ranks, this equals (module docstring). Collective: every rank calls it, with its own rows (M may be
    0). The shard's gradient goes to `sink` in backward when one is given, else to autograd."""
    return ShardedItemSoftmaxNLL.apply(hidden, shard, target_rows, target_items, layout, comm, sink,
                                       gradient_dtype, block_elements)


def combine_over(comm: Collectives) -> Combine:
    """Each row's (max, Σ exp(logit − max)) over this rank's items → over every rank's: one all-gather
    of both [2, n], then the same arithmetic on every rank (so every rank gets the same bits)."""
    def combine(top: torch.Tensor, total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = comm.all_gather(torch.stack([top, total]))  # [R, 2, n]
        tops, totals = both[:, 0], both[:, 1]
        top_all = tops.amax(dim=0)
        return top_all, (totals * torch.exp(tops - top_all)).sum(dim=0)

    return combine


class ShardedItemSoftmaxNLL(torch.autograd.Function):
    """See `sharded_item_softmax_nll_sum` and the module docstring."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, shard: torch.Tensor, rows: torch.Tensor, items: torch.Tensor,
                layout: RowShards, comm: Collectives, sink: TableGradients | None,
                gradient_dtype: torch.dtype | None, block_elements: int | None) -> torch.Tensor:
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        everyone, counts = comm.all_gather_rows(hidden)  # [T, K], in the hidden states' own dtype
        offsets = [sum(counts[:r]) for r in range(comm.world + 1)]
        first, n_mine = offsets[comm.rank], counts[comm.rank]
        pairs, _ = comm.all_gather_rows(torch.stack([rows + first, items], dim=1))  # [P_all, 2]
        h = everyone.to(dtype)
        n_rows, dim = h.shape
        weights = torch.bincount(pairs[:, 0], minlength=n_rows).to(dtype)  # c_r [T]
        stored = products_dtype(n_rows, dtype, gradient_dtype)
        block_elements = LOGIT_BLOCK_BYTES // stored.itemsize if block_elements is None else block_elements
        lo, hi = layout.range(comm.rank)
        w = shard.to(dtype)
        # each row's hidden-state gradient (this shard's share; when needed) and, last, its target logit
        shares = h.new_zeros(n_rows, dim + 1 if need_h else 1)
        logit = shares.shape[1] - 1
        kept = sink.take(shard) if sink is not None and need_w and shard.dtype == dtype else None
        grad_w = None
        if need_w:
            grad_w = kept if kept is not None else torch.empty_like(w, memory_format=torch.contiguous_format)
            if not n_rows:
                grad_w.zero_()
        lse = h.new_empty(n_rows)
        softmax_chunks(h, w, weights, shares[:, :dim] if need_h else None, grad_w, block_elements, stored,
                       chunk_items=layout.largest, combine=combine_over(comm), lse=lse)
        owned = (pairs[:, 1] >= lo) & (pairs[:, 1] < hi)  # the target pairs whose item this rank holds
        own_rows, own_items = pairs[owned, 0], pairs[owned, 1] - lo
        shares[:, logit].index_add_(0, own_rows, (h[own_rows] * w[own_items]).sum(dim=1))
        if need_h:
            shares[:, :dim].index_add_(0, own_rows, w[own_items], alpha=-1)
        if need_w:
            grad_w.index_add_(0, own_items, h[own_rows], alpha=-1)
        padded = shares.new_zeros(comm.world, max(counts), shares.shape[1])
        for r, n in enumerate(counts):
            padded[r, :n] = shares[offsets[r] : offsets[r] + n]
        mine = comm.reduce_scatter(padded.view(-1, shares.shape[1]))[:n_mine]  # summed over the ranks
        grad_h = mine[:, :dim].contiguous() if need_h else None
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, shard.dtype)
        ctx.table, ctx.sink = shard, (sink if kept is not None else None)
        return (weights[first : first + n_mine] * lse[first : first + n_mine]).sum() - mine[:, logit].sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return (*scaled_gradients(ctx, grad_out), None, None, None, None, None, None, None)
