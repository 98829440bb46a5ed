"""MostPop: every item scored by its number of training interactions, the same list for every user.

It needs no training and knows nothing about the user beyond the exclusion of its training items, so
a model that does not clear it has learned popularity at most.
"""
from __future__ import annotations

import numpy as np
import torch

from cllm4rec.interactions import UserItems


def item_popularity(train: UserItems) -> torch.Tensor:
    """Training interactions per item, float32 [J]."""
    return torch.from_numpy(train.item_counts()).to(torch.float32)


def score_mostpop(popularity: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """Scores float32 [len(rows), J]: the popularity [J] in every row (the ranking breaks ties by the
    lower item index)."""
    return popularity.repeat(len(rows), 1)
