"""EASE (Steck, 2019): closed-form item-item linear autoencoder with a zero diagonal.

B = I − P · diagMat(1 / diag(P)) with P = (XᵀX + λI)⁻¹, so diag(B) = 0; the scores of a user are
x · B. The inverse is computed in float64; λ is chosen on validation by
Recall@20 + Recall@40 + NDCG@100.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cllm4rec.interactions import UserItems
from cllm4rec.metrics import SELECTION_KEYS, evaluate_scores, selection_score


def gram_matrix(train: UserItems, chunk_size: int = 4096) -> torch.Tensor:
    """XᵀX as float64 [J, J], accumulated over chunks of users to bound memory."""
    gram = torch.zeros(train.n_items, train.n_items, dtype=torch.float64)
    for start in range(0, train.n_users, chunk_size):
        rows = np.arange(start, min(start + chunk_size, train.n_users))
        x = train.to_dense(rows, dtype=torch.float64)
        gram += x.T @ x
    return gram


def ease_from_gram(gram: torch.Tensor, l2: float) -> torch.Tensor:
    """Item-item weights float32 [J, J] from XᵀX float64 [J, J] and the L2 weight λ > 0."""
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    regularised = gram.to(torch.float64) + l2 * torch.eye(gram.shape[0], dtype=torch.float64)
    precision = torch.cholesky_inverse(torch.linalg.cholesky(regularised))
    weights = -precision / precision.diagonal().unsqueeze(0)
    weights.fill_diagonal_(0.0)
    return weights.to(torch.float32)


def fit_ease(train: UserItems, l2: float) -> torch.Tensor:
    """EASE weights B float32 [J, J] (zero diagonal) for the L2 weight ``l2``."""
    return ease_from_gram(gram_matrix(train), l2)


def score_ease(weights: torch.Tensor, train: UserItems, rows: np.ndarray) -> torch.Tensor:
    """Scores float32 [len(rows), J] = X[rows] · B, on the device of ``weights``."""
    return train.to_dense(rows, dtype=weights.dtype, device=weights.device) @ weights


@dataclass
class EaseSelection:
    """Result of `select_ease`: the chosen λ, its weights [J, J] and validation metrics per λ."""

    l2: float
    weights: torch.Tensor
    val_metrics: dict[float, dict[str, float]]


def select_ease(
    train: UserItems,
    val: UserItems,
    l2_grid: Sequence[float] = (10, 50, 100, 200, 500, 1000, 2000),
    selection_keys: Sequence[str] = SELECTION_KEYS,
    batch_size: int = 1024,
) -> EaseSelection:
    """Fit EASE for every λ in ``l2_grid`` and keep the best on validation.

    The criterion is the sum of ``selection_keys`` (default Recall@20 + Recall@40 + NDCG@100);
    ties go to the earlier λ of the grid.
    """
    if not l2_grid:
        raise ValueError("l2_grid is empty")
    gram = gram_matrix(train)
    ks_recall = sorted({int(k.split("@")[1]) for k in selection_keys if k.startswith("recall@")})
    ks_ndcg = sorted({int(k.split("@")[1]) for k in selection_keys if k.startswith("ndcg@")})
    best: EaseSelection | None = None
    best_score = float("-inf")
    val_metrics: dict[float, dict[str, float]] = {}
    for l2 in l2_grid:
        weights = ease_from_gram(gram, float(l2))
        metrics = evaluate_scores(
            lambda rows, w=weights: score_ease(w, train, rows),
            train,
            val,
            ks_recall=ks_recall,
            ks_ndcg=ks_ndcg,
            batch_size=batch_size,
        )
        val_metrics[float(l2)] = metrics
        current = selection_score(metrics, selection_keys)
        if current > best_score:
            best_score = current
            best = EaseSelection(float(l2), weights, val_metrics)
    assert best is not None
    return best
