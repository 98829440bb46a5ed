"""Duplicate merging and iterative k-core filtering on integer-coded interactions."""
from __future__ import annotations

import numpy as np


def merge_duplicates(users: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Indices of the rows to keep so each (user, item) pair appears once: its earliest time.

    Ties in time keep the row that came first in the input. Returns sorted int64 row indices.
    """
    order = np.lexsort((np.arange(users.shape[0]), times, items, users))
    pairs_sorted = np.stack([users[order], items[order]], axis=1)
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = np.any(pairs_sorted[1:] != pairs_sorted[:-1], axis=1)
    return np.sort(order[first])


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Boolean mask of the interactions in the k-core: every kept user and item has ≥ k of them.

    Filters users and items alternately until nothing changes. k ≤ 1 keeps everything.
    Returns (mask [n], number of rounds run).
    """
    mask = np.ones(users.shape[0], dtype=bool)
    if k <= 1:
        return mask, 0
    rounds = 0
    while True:
        rounds += 1
        user_count = np.bincount(users[mask], minlength=int(users.max(initial=-1)) + 1)
        item_count = np.bincount(items[mask], minlength=int(items.max(initial=-1)) + 1)
        keep = mask & (user_count[users] >= k) & (item_count[items] >= k)
        if np.array_equal(keep, mask):
            return mask, rounds
        mask = keep
