"""Losses of CLLM4Rec (SPEC sections 4-6): main-part LM losses, the multinomial recommendation
likelihood, and the mutual-regularisation / prior terms, with the SPEC section 5 scaling.

Scaling: an LM loss is the MEAN over the batch's main-part tokens; the MR term is λ_c × the SUM over
every ID-token occurrence of ||z − ẑ||² (no ½); the prior likewise with λ_l. `*_sum` functions return
sums and counts so that a distributed caller can reduce them across ranks before dividing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


LOGIT_BLOCK_ELEMENTS = 1 << 24  # 64 MiB of fp32 logits per item block: [tokens, J] is never built whole


def item_cross_entropy_sum(hidden: torch.Tensor, item_table: torch.Tensor, targets: torch.Tensor,
                           block_elements: int = LOGIT_BLOCK_ELEMENTS) -> torch.Tensor:
    """Σ over rows of −log softmax(hidden @ item_tableᵀ)[target]: the item-space next-token loss.

    hidden [M, K] and item_table [J, K] in any float dtype (computed in fp32), targets [M] item
    indices. Returns a scalar sum (divide by the token count for the mean). When M·J exceeds
    `block_elements` the softmax runs over blocks of items (`BlockedItemCrossEntropy`): the same
    loss and gradients, with memory O(M · block) instead of O(M · J).
    """
    if hidden.shape[0] * item_table.shape[0] <= block_elements:
        logits = hidden.float() @ item_table.float().t()
        return F.cross_entropy(logits, targets, reduction="sum")
    block = max(1, block_elements // max(hidden.shape[0], 1))
    return BlockedItemCrossEntropy.apply(hidden, item_table, targets, block)


class BlockedItemCrossEntropy(torch.autograd.Function):
    """Exact softmax cross-entropy over a large item table, one block of items at a time.

    Forward keeps a running log-sum-exp per row; backward recomputes each block's logits and adds
    softmax·W to the hidden gradient and softmaxᵀ·h to the table gradient, then subtracts the
    target rows: d/dh = Σ_j p_j w_j − w_t, d/dw_j = Σ_rows (p_j − 1[j = t]) h.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, block: int) -> torch.Tensor:
        h = hidden.float()
        lse = torch.full((h.shape[0],), float("-inf"), device=h.device)
        for start in range(0, table.shape[0], block):
            logits = h @ table[start : start + block].float().t()
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
        target_logits = (h * table[targets].float()).sum(dim=1)
        ctx.save_for_backward(hidden, table, targets, lse)
        ctx.block = block
        return (lse - target_logits).sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, table, targets, lse = ctx.saved_tensors
        h = hidden.float()
        grad_h = torch.zeros_like(h)
        grad_table = torch.zeros(table.shape, dtype=torch.float32, device=table.device)
        for start in range(0, table.shape[0], ctx.block):
            rows = table[start : start + ctx.block].float()
            probs = torch.exp(h @ rows.t() - lse[:, None])  # [M, block]
            grad_h += probs @ rows
            grad_table[start : start + ctx.block] = probs.t() @ h
        grad_h -= table[targets].float()
        grad_table.index_add_(0, targets, -h)
        grad_out = grad_out.float()
        return (grad_h * grad_out).to(hidden.dtype), (grad_table * grad_out).to(table.dtype), None, None


def vocab_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ of −log softmax(logits)[target] over rows; logits [M, V] (cast to fp32), targets [M]."""
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def multinomial_nll_sum(logits: torch.Tensor, target_rows: torch.Tensor, target_items: torch.Tensor) -> torch.Tensor:
    """Σ_b −Σ_j target_bj · log softmax(logits_b)_j for a sparse multi-hot target.

    logits [B, J]; the target is given as COO pairs (target_rows [P], target_items [P]), each pair a 1.
    Returns the sum over the batch (divide by B for the Multi-VAE mean over users).
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -log_probs[target_rows, target_items].sum()


def squared_distance_sum(table: torch.Tensor, anchor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Σ over the occurrences `rows` [R] of ||table[r] − anchor[r]||² (anchor is not differentiated)."""
    if rows.numel() == 0:
        return table.sum() * 0.0
    return (table[rows].float() - anchor[rows].detach().float()).pow(2).sum()


def squared_norm_sum(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Σ over the occurrences `rows` [R] of ||table[r]||² (the Gaussian prior with λ_l)."""
    if rows.numel() == 0:
        return table.sum() * 0.0
    return table[rows].float().pow(2).sum()
