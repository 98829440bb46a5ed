"""Losses of CLLM4Rec (docs/method.md §5–§7, §9.2): main-part LM losses, the multinomial recommendation
likelihood, and the mutual-regularisation / prior terms, with the authors' scaling (docs/method.md §7.3).

Scaling: an LM loss is the MEAN over the batch's main-part tokens; the MR term is λ_c × the SUM over
every ID-token occurrence of ||z − ẑ||² (no ½); the prior likewise with λ_l. `*_sum` functions return
sums and counts so that a distributed caller can reduce them across ranks before dividing.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from cllm4rec.table_gradients import TableGradients


LOGIT_BLOCK_BYTES = 1 << 29  # stored exps held at once (512 MiB): [rows, J] logits are never built whole
LOG2_E = 1 / math.log(2)  # exp(x) = exp2(log2(e)·x)
CACHE_BLOCK_ELEMENTS = 1 << 19  # one [rows, items] fp32 block worked on while it sits in cache (2 MiB)
# a narrower gradient dtype from this many rows on: with fewer, converting the table's blocks to it costs
# more than the narrower products save (bf16 on a 2-core AMX CPU: 1.08–1.10x slower at 32 rows, 0.82–0.85x at 64)
NARROW_PRODUCTS_MIN_ROWS = 64
_WORKSPACE: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
# per-row (max, Σ exp(logit − max)) over one rank's items → the same over every rank's (`softmax_chunks`)
Combine = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def workspace(elements: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A flat scratch buffer of `elements`, kept between calls: a fresh large allocation costs a page
    fault per 4 KiB page on first touch, as much as the products written into it on a CPU."""
    buffer = _WORKSPACE.get((device, dtype))
    if buffer is None or buffer.numel() < elements:
        _WORKSPACE.pop((device, dtype), None)
        buffer = _WORKSPACE[(device, dtype)] = torch.empty(elements, device=device, dtype=dtype)
    return buffer[:elements]


def exp_depth(dtype: torch.dtype) -> float:
    """How far below its block's or row's max a logit may go before its exp is clamped: −2·ln(eps)
    (31.8 in fp32), so the exp stays at or above eps² and is never a subnormal float (each costs ~50×
    a normal one on a CPU)."""
    return -2 * math.log(torch.finfo(dtype).eps)


def shifted_exp_(block: torch.Tensor, peak: torch.Tensor, depth: float) -> torch.Tensor:
    """exp(block − peak) in place, arguments clamped at −depth; peak broadcasts over block's rows.
    Computed as exp2 of log2(e)·(block − peak): within an ulp of exp's value, and ~4× faster than
    torch's exp on the development CPU (docs/performance.md). The multiply comes after the
    subtraction, which is exact near the peak."""
    return block.sub_(peak).clamp_(min=-depth).mul_(LOG2_E).exp2_()


def item_softmax_nll_sum(hidden: torch.Tensor, item_table: torch.Tensor, target_rows: torch.Tensor,
                         target_items: torch.Tensor, block_elements: int | None = None,
                         sink: TableGradients | None = None, gradient_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Σ over target pairs (r, j) of −log softmax(hidden @ item_tableᵀ)[r, j]: every item-space loss.

    hidden [M, K] and item_table [J, K] in any float dtype (computed in fp32, or fp64 when given);
    the targets are COO pairs target_rows [P] / target_items [P]. The item-space next-token loss has
    one pair per row (target_rows = arange(M)); the multinomial likelihood of finetuning
    has a user's whole masked-off set on its row. Returns the scalar sum. Computed by
    `FusedItemSoftmaxNLL`: 6·K·J FLOPs per row, at most `block_elements` exps stored at once (None:
    512 MiB of them). The loss is exact in the compute dtype. `gradient_dtype` (None: the compute dtype;
    or bf16) is the dtype of the two gradient products' operands, 4·K·J of those FLOPs, in calls of at
    least NARROW_PRODUCTS_MIN_ROWS rows: bf16 runs them at bf16 speed (a bf16 backbone's hidden states
    are bf16 already), the sums still accumulated in the compute dtype, with gradients ~0.1% (relative
    norm) from the exact ones. With a `sink`, the table's gradient is written into the sink's kept
    buffer for the table and handed to the sink in backward (cllm4rec/table_gradients.py) instead of
    being returned to autograd.
    """
    if gradient_dtype not in (None, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"gradient_dtype must be None, bfloat16, float32 or float64, got {gradient_dtype} "
                         "(float16 cannot hold the exps down to the clamp at eps² of fp32)")
    return FusedItemSoftmaxNLL.apply(hidden, item_table, target_rows, target_items, block_elements, sink,
                                     gradient_dtype)


def products_dtype(n_rows: int, dtype: torch.dtype, gradient_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a call's gradient products run in: `gradient_dtype` from NARROW_PRODUCTS_MIN_ROWS rows
    on, else the compute dtype `dtype`."""
    return gradient_dtype if gradient_dtype is not None and n_rows >= NARROW_PRODUCTS_MIN_ROWS else dtype


def add_product(target: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool, out: torch.Tensor) -> None:
    """target (+)= a @ b: in one addmm where a has target's dtype, else through `out` (a's narrower
    dtype; CPU products have no wider output) and one add or copy into target."""
    if a.dtype == target.dtype:
        target.addmm_(a, b, beta=float(accumulate))
    elif accumulate:
        target.add_(torch.mm(a, b, out=out))
    else:
        target.copy_(torch.mm(a, b, out=out))


class FusedItemSoftmaxNLL(torch.autograd.Function):
    """Exact item-softmax NLL whose gradients are computed in the forward pass.

    With c_r target pairs on row r, loss = Σ_r c_r·lse_r − Σ_pairs logit_rj and the gradient of the
    logits is c_r·p_r − (the row's one-hots), so d/dh_r = c_r Σ_j p_rj w_j − Σ_pairs w_j and
    d/dw_j = Σ_r c_r p_rj h_r − Σ_pairs h_r. Rows go in equal chunks of at most block_elements / J;
    a chunk's item axis in cache-sized blocks. Pass 1, per block: logits (2·K FLOPs each), block max,
    exp in place (`shifted_exp_`), block sum, all in the compute dtype; the exps e are stored (rounded
    to the gradient dtype where that is narrower). Pass 2, per block: multiply the stored exps into
    both gradients (2·K FLOPs each, twice, operands in the gradient dtype, each product added into a
    compute-dtype sum);
    c_r·p_r = f_rb·e with one factor f per (row, block), which scales either the block in place or,
    where 2·K is under the block's width, the small [rows, K] operands instead:
    grad_h += f·(e @ w_block), grad_w_block += eᵀ @ (f·h).
    Each logit is built and exponentiated once, nothing is recomputed in backward (which only scales
    the stored gradients).

    No subnormal float is made (on a CPU each costs ~50× a normal one: logits spread over more than
    ~87 made a call 10× slower): a logit more than d = −2·ln(eps) below its block's max (31.8 in fp32)
    counts as d below, and a (row, block) pair whose largest probability is under tiny·e^(2d) (5e-11
    in fp32) adds no gradient — changes far below the rounding of the fp32 sums.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, table: torch.Tensor, rows: torch.Tensor, items: torch.Tensor,
                block_elements: int | None, sink: TableGradients | None,
                gradient_dtype: torch.dtype | None) -> torch.Tensor:
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        stored = products_dtype(hidden.shape[0], dtype, gradient_dtype)  # the products' operands, stored exps among them
        if block_elements is None:
            block_elements = LOGIT_BLOCK_BYTES // stored.itemsize
        h, w = hidden.to(dtype), table.to(dtype)
        n_rows = h.shape[0]
        counts = torch.bincount(rows, minlength=n_rows).to(dtype)  # c_r [M]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(h) if need_h else None
        kept = sink.take(table) if sink is not None and need_w and table.dtype == dtype else None
        grad_w = None  # the first row chunk writes every row: no zero fill unless there are no rows
        if need_w:
            grad_w = kept if kept is not None else torch.empty_like(w, memory_format=torch.contiguous_format)
            if not n_rows:
                grad_w.zero_()
        lse_sum = softmax_chunks(h, w, counts, grad_h, grad_w, block_elements, stored)
        if need_h:
            grad_h.index_add_(0, rows, w[items], alpha=-1)
        if need_w:
            grad_w.index_add_(0, items, h[rows], alpha=-1)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, table.dtype)
        ctx.table, ctx.sink = table, (sink if kept is not None else None)
        return lse_sum - (h[rows] * w[items]).sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return (*scaled_gradients(ctx, grad_out), None, None, None, None, None)


def scaled_gradients(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The backward of a fused item softmax: the (hidden, table) gradients its forward saved, scaled in
    place (no second [J, K] buffer; backward through the same graph twice therefore fails autograd's
    saved-tensor version check instead of giving wrong sums) and cast back to the inputs' dtypes
    (`ctx.dtypes`); the table's handed to `ctx.sink` instead of autograd when the forward took one."""
    grad_h, grad_w = ctx.saved_tensors
    scale = grad_out.to(grad_h.dtype if grad_h is not None else grad_w.dtype)
    if grad_h is not None:
        grad_h = grad_h.mul_(scale).to(ctx.dtypes[0])
    if grad_w is not None:
        grad_w = grad_w.mul_(scale).to(ctx.dtypes[1])
        if ctx.sink is not None:  # the table's gradient goes to the sink, not to autograd
            ctx.sink.add_dense(ctx.table, grad_w)
            grad_w = None
    return grad_h, grad_w


def softmax_chunks(h: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, grad_h: torch.Tensor | None,
                   grad_w: torch.Tensor | None, block_elements: int, stored: torch.dtype, *,
                   chunk_items: int | None = None, combine: Combine | None = None,
                   lse: torch.Tensor | None = None) -> torch.Tensor:
    """The chunked passes of `FusedItemSoftmaxNLL` (see there) over h [M, K] and the table rows w [J, K]
    (compute dtype), with c_r = counts [M]: Σ_r c_r·lse_r, returned, and the softmax part of both
    gradients, c_r·p_r·w into grad_h [M, K] (added) and Σ_r c_r·p_r·h_r into grad_w [J, K] (written
    whole: its contents before do not matter); either may be None. `stored`: the products' dtype.

    Several ranks holding the rows of one table (cllm4rec/sharded_softmax.py) share these passes:
    `chunk_items` (default J) sizes the row chunks, so ranks with shards of different sizes cut the
    same chunks; `combine` turns each chunk's per-row (max, Σ exp(logit − max)) [n] over this rank's
    items into those over every rank's, before the gradients; `lse` [M], when given, receives each
    row's log-sum-exp."""
    chunk_items = w.shape[0] if chunk_items is None else chunk_items
    n_rows, n_items = h.shape[0], w.shape[0]
    need_h, need_w = grad_h is not None, grad_w is not None
    dtype = h.dtype
    most = max(1, block_elements // max(chunk_items, 1))  # rows whose logits fit in memory at once
    n_chunks = max(1, math.ceil(n_rows / most))  # row chunks of equal sizes (±1): no thin last one
    bounds = [n_rows * i // n_chunks for i in range(n_chunks + 1)]
    chunk = max(1, math.ceil(n_rows / n_chunks))  # the largest chunk's rows
    width = max(1, min(n_items, CACHE_BLOCK_ELEMENTS // chunk))
    starts = list(range(0, n_items, width))
    # no subnormals (see above): exps clamped at e^−depth = eps², factors under least_factor dropped
    depth = exp_depth(dtype)
    least_factor = torch.finfo(dtype).tiny * math.exp(2 * depth)
    lse_sum = h.new_zeros(())
    for r0, r1 in zip(bounds, bounds[1:]):
        part, c = h[r0:r1], counts[r0:r1]
        n = part.shape[0]
        store = workspace(len(starts) * n * width, h.device, stored).view(len(starts), n * width)
        # a narrower stored dtype: exps made in one cache-sized compute-dtype block, then stored rounded
        scratch = workspace(n * width, h.device, dtype) if stored != dtype else None
        peaks, sums = h.new_empty(len(starts), n), h.new_empty(len(starts), n)  # per (block, row)
        blocks = []
        for b, s0 in enumerate(starts):
            rows_w = w[s0 : s0 + width]
            kept_block = store[b, : n * rows_w.shape[0]].view(n, rows_w.shape[0])
            block = kept_block if scratch is None else scratch[: kept_block.numel()].view_as(kept_block)
            torch.mm(part, rows_w.t(), out=block)
            torch.amax(block, dim=1, out=peaks[b])
            torch.sum(shifted_exp_(block, peaks[b, :, None], depth), dim=1, out=sums[b])
            blocks.append(kept_block if scratch is None else kept_block.copy_(block))
        top = peaks.amax(dim=0)  # [n]
        relative = torch.exp(peaks - top)  # exp(peak_b − max_r) [B, n]
        total = (sums * relative).sum(dim=0)  # Σ_j exp(logit − max_r) [n]
        if combine is not None:  # every rank's items: exp(peak_b − max over ranks)
            top_all, total = combine(top, total)
            relative.mul_(torch.exp(top - top_all))
            top = top_all
        row_lse = top + total.log()
        if lse is not None:
            lse[r0:r1] = row_lse
        lse_sum += (c * row_lse).sum()
        if need_h or need_w:
            factors = relative.mul_(c / total)  # c_r·exp(peak_b − lse_r) [B, n]
            factors.masked_fill_(factors < least_factor, 0.0)
            grad_part = grad_h[r0:r1] if need_h else None
            scale_operands = 2 * h.shape[1] < width  # scale [n, K] twice rather than the [n, width] block
            part_stored = None if scale_operands else part.to(stored)
            to_h = h.new_empty(n, h.shape[1], dtype=stored)  # e @ w_block
            to_w = h.new_empty(width, h.shape[1], dtype=stored)  # eᵀ @ h
            for b, s0 in enumerate(starts):
                rows_w, scale = w[s0 : s0 + width].to(stored), factors[b, :, None]
                # the block's exps, and the rows of h they multiply: one of the two scaled by f
                exps, rows_h = ((blocks[b], (part * scale).to(stored)) if scale_operands
                                else (blocks[b].mul_(scale), part_stored))
                if need_h and scale_operands:
                    grad_part.addcmul_(torch.mm(exps, rows_w, out=to_h), scale)
                elif need_h:
                    add_product(grad_part, exps, rows_w, True, to_h)
                if need_w:  # the first chunk overwrites (the buffer is not zeroed)
                    add_product(grad_w[s0 : s0 + width], exps.t(), rows_h, r0 > 0, to_w[: rows_w.shape[0]])
    return lse_sum


def vocab_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ of −log softmax(logits)[target] over rows: the content LLM's vocabulary loss. logits [M, V] in
    any float dtype (computed in fp32, or fp64 when given), targets [M] word ids. Computed by
    `FusedVocabCrossEntropy`: the loss of `F.cross_entropy(logits.float(), targets, reduction="sum")`;
    its gradient is rounded to the logits' dtype once more (stored, then scaled) where that is narrower."""
    if targets.numel():
        low, high = (int(x) for x in targets.aminmax())
        if low < 0 or high >= logits.shape[1]:
            raise ValueError(f"vocabulary targets must be word ids in [0, {logits.shape[1]}), got ids from {low} to {high}")
    return FusedVocabCrossEntropy.apply(logits, targets)


class FusedVocabCrossEntropy(torch.autograd.Function):
    """Vocabulary cross-entropy whose gradient, softmax − one-hot, is computed in the forward pass.

    A few rows at a time (on a CPU, a cache-sized fp32 block of CACHE_BLOCK_ELEMENTS), each logit is
    read once, exponentiated once (`shifted_exp_`, as in the item softmax: no subnormal float is made)
    and its gradient written once, in the logits' dtype: no [M, V] fp32 copy, log-probabilities or
    second exp in backward (F.cross_entropy on a bf16 model's logits made all three). Backward scales
    the stored gradient in place."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        n_rows, n_words = logits.shape
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None  # softmax − one-hot
        lse = logits.new_empty(n_rows, dtype=dtype)
        # a cache-sized block on a CPU; on an accelerator, up to LOGIT_BLOCK_BYTES at once (few kernel launches)
        block_elements = CACHE_BLOCK_ELEMENTS if logits.device.type == "cpu" else LOGIT_BLOCK_BYTES // dtype.itemsize
        rows = max(1, block_elements // max(n_words, 1))
        scratch = workspace(min(rows, n_rows) * n_words, logits.device, dtype)
        depth = exp_depth(dtype)
        for r0 in range(0, n_rows, rows):
            part = logits[r0 : r0 + rows]
            block = scratch[: part.numel()].view(part.shape).copy_(part)
            peak = block.amax(dim=1, keepdim=True)
            total = shifted_exp_(block, peak, depth).sum(dim=1, keepdim=True)
            lse[r0 : r0 + rows] = (peak + total.log()).squeeze(1)
            if grad is not None:
                block.div_(total)
                block[torch.arange(part.shape[0], device=block.device), targets[r0 : r0 + rows]] -= 1
                grad[r0 : r0 + rows].copy_(block)
        ctx.save_for_backward(grad)
        return (lse - logits.gather(1, targets[:, None]).squeeze(1).to(dtype)).sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        """In place (see FusedItemSoftmaxNLL.backward). On a CPU a bf16 gradient times the fp32 scalar
        is rounded once: the scalar is not rounded to bf16 first."""
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_out), None


def squared_distance_sum(vectors: torch.Tensor, anchors: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Σ over distinct rows of counts·||vector − anchor||²: the sum over every occurrence of a row.

    vectors / anchors [U, K] (anchors are not differentiated), counts [U] occurrences of each row."""
    return (counts[:, None] * (vectors.float() - anchors.detach().float()).pow(2)).sum()


def squared_norm_sum(vectors: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Σ over distinct rows of counts·||vector||² (the Gaussian prior with λ_l); shapes as above."""
    return (counts[:, None] * vectors.float().pow(2)).sum()
