"""The per-user random 80/10/10 split (docs/data.md, section 2)."""
from __future__ import annotations

import numpy as np

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")
MIN_INTERACTIONS = 3


def held_out_count(n: int) -> int:
    """n_val = n_test = max(1, round(0.1·n)), rounding halves up (not Python's banker's rounding)."""
    return max(1, int(np.floor(0.1 * n + 0.5)))


def split_per_user(users: np.ndarray, n_users: int, seed: int) -> np.ndarray:
    """Assign each interaction to train/val/test, per user, at random.

    users: int64 [n] contiguous user indices, every user having ≥ MIN_INTERACTIONS rows.
    Returns int8 [n] of TRAIN/VAL/TEST. Users are visited in index order and each user's rows in
    input order, with one seeded generator, so the same input and seed give the same split.
    """
    rng = np.random.default_rng(seed)
    split = np.full(users.shape[0], TRAIN, dtype=np.int8)
    order = np.argsort(users, kind="stable")
    bounds = np.searchsorted(users[order], np.arange(n_users + 1))
    for user in range(n_users):
        rows = order[bounds[user] : bounds[user + 1]]
        n = rows.shape[0]
        if n < MIN_INTERACTIONS:
            raise ValueError(f"user {user} has {n} interactions; at least {MIN_INTERACTIONS} are needed to split")
        held = held_out_count(n)
        shuffled = rows[rng.permutation(n)]
        split[shuffled[:held]] = VAL
        split[shuffled[held : 2 * held]] = TEST
    return split
