"""Losses of CLLM4Rec (SPEC sections 4-6): main-part LM losses, the multinomial recommendation
likelihood, and the mutual-regularisation / prior terms, with the SPEC section 5 scaling.

Scaling: an LM loss is the MEAN over the batch's main-part tokens; the MR term is λ_c × the SUM over
every ID-token occurrence of ||z − ẑ||² (no ½); the prior likewise with λ_l. `*_sum` functions return
sums and counts so that a distributed caller can reduce them across ranks before dividing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def item_cross_entropy_sum(hidden: torch.Tensor, item_table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ over rows of −log softmax(hidden @ item_tableᵀ)[target]: the item-space next-token loss.

    hidden [M, K] and item_table [J, K] in any float dtype (computed in fp32), targets [M] item
    indices. Returns a scalar sum (divide by the token count for the mean).
    """
    logits = hidden.float() @ item_table.float().t()
    return F.cross_entropy(logits, targets, reduction="sum")


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
