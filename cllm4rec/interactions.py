"""User-item sets in compressed sparse row (CSR) form.

`UserItems` is the shared currency between data splits, models and metrics: row ``u`` holds the
(sorted, distinct) item indices user ``u`` interacted with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def _as_int64_vector(values: object, name: str) -> np.ndarray:
    """Return `values` as a 1-D int64 array, refusing non-integer or multi-dimensional input."""
    array = np.asarray(values)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class UserItems:
    """Per-user item sets as CSR.

    Attributes:
        indptr: int64 [U+1]; row ``u`` is ``indices[indptr[u]:indptr[u+1]]``.
        indices: int64 [nnz]; item indices in ``[0, n_items)``.
        n_items: catalogue size J.
    """

    indptr: np.ndarray
    indices: np.ndarray
    n_items: int

    def __post_init__(self) -> None:
        indptr = _as_int64_vector(self.indptr, "indptr")
        indices = _as_int64_vector(self.indices, "indices")
        n_items = int(self.n_items)
        if n_items < 0:
            raise ValueError(f"n_items must be >= 0, got {n_items}")
        if indptr.size == 0 or indptr[0] != 0:
            raise ValueError("indptr must be non-empty and start at 0")
        if np.any(np.diff(indptr) < 0):
            raise ValueError("indptr must be non-decreasing")
        if indptr[-1] != indices.size:
            raise ValueError(f"indptr ends at {indptr[-1]} but there are {indices.size} indices")
        if indices.size and (indices.min() < 0 or indices.max() >= n_items):
            raise ValueError(
                f"item indices must lie in [0, {n_items}), got range "
                f"[{indices.min()}, {indices.max()}]"
            )
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "n_items", n_items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserItems):
            return NotImplemented
        return (
            self.n_items == other.n_items
            and np.array_equal(self.indptr, other.indptr)
            and np.array_equal(self.indices, other.indices)
        )

    @property
    def n_users(self) -> int:
        """Number of rows U."""
        return int(self.indptr.size - 1)

    @property
    def nnz(self) -> int:
        """Total number of (user, item) pairs."""
        return int(self.indices.size)

    def row(self, u: int) -> np.ndarray:
        """Item indices of user ``u`` (int64 [n_u], a view)."""
        if not 0 <= u < self.n_users:
            raise IndexError(f"user {u} out of range [0, {self.n_users})")
        return self.indices[self.indptr[u] : self.indptr[u + 1]]

    def lengths(self) -> np.ndarray:
        """Items per user, int64 [U]."""
        return np.diff(self.indptr)

    def owners(self) -> np.ndarray:
        """The user of each stored item, int64 [nnz] (aligned with ``indices``)."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), self.lengths())

    def item_counts(self) -> np.ndarray:
        """Users per item (each (user, item) pair counted once), int64 [J]."""
        return np.bincount(self.indices, minlength=self.n_items)

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]], n_items: int) -> UserItems:
        """Build from one item list per user; each row is sorted and deduplicated."""
        rows = [np.unique(_as_int64_vector(items, f"lists[{u}]")) for u, items in enumerate(lists)]
        lengths = np.array([r.size for r in rows], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        return cls(indptr, indices, n_items)

    @classmethod
    def from_pairs(
        cls, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int
    ) -> UserItems:
        """Build from parallel (user, item) arrays; rows sorted, duplicate pairs merged."""
        users = _as_int64_vector(users, "users")
        items = _as_int64_vector(items, "items")
        if users.size != items.size:
            raise ValueError(f"users ({users.size}) and items ({items.size}) differ in length")
        if users.size and (users.min() < 0 or users.max() >= n_users):
            raise ValueError(f"user indices must lie in [0, {n_users})")
        if items.size and (items.min() < 0 or items.max() >= n_items):
            raise ValueError(f"item indices must lie in [0, {n_items})")
        keys = np.unique(users * np.int64(max(n_items, 1)) + items)
        row_of_key = keys // max(n_items, 1)
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(row_of_key, minlength=n_users), out=indptr[1:])
        return cls(indptr, keys % max(n_items, 1), n_items)

    def _normalise_rows(self, rows: np.ndarray | Sequence[int] | None) -> np.ndarray:
        if rows is None:
            return np.arange(self.n_users, dtype=np.int64)
        rows = _as_int64_vector(rows, "rows")
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_users):
            raise IndexError(f"rows must lie in [0, {self.n_users})")
        return rows

    def subset(self, rows: np.ndarray | Sequence[int]) -> UserItems:
        """The rows ``rows`` (in that order, repeats allowed) as a new `UserItems` [len(rows)]."""
        rows = self._normalise_rows(rows)
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        gather = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1], dtype=np.int64)
        return UserItems(indptr, self.indices[gather], self.n_items)

    def to_dense(
        self,
        rows: np.ndarray | Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Multi-hot matrix [len(rows), n_items] (all rows when ``rows`` is None)."""
        sub = self.subset(self._normalise_rows(rows))
        dense = torch.zeros(sub.n_users, self.n_items, dtype=dtype, device=device)
        row_ids = torch.from_numpy(sub.owners()).to(device)
        dense[row_ids, torch.from_numpy(sub.indices).to(device)] = 1
        return dense


def first_occurrences(items: np.ndarray) -> np.ndarray:
    """`items` without repeats, each kept at its first position: [3, 1, 3, 2] → [3, 1, 2]."""
    items = np.asarray(items, dtype=np.int64)
    _, first = np.unique(items, return_index=True)
    return items[np.sort(first)]


def popularity_entropy(interactions: UserItems) -> float:
    """Entropy of item popularity in nats: H = −Σ_j p_j ln p_j, p_j = (pairs of item j) / (all pairs).

    The cross-entropy per item token of a model that predicts every item from its popularity alone,
    so the floor a collaborative LM must get below to show it learned more than popularity. Items
    without interactions add nothing (0 ln 0 = 0); 0.0 when there are no interactions.
    """
    counts = interactions.item_counts()
    p = counts[counts > 0] / max(interactions.nnz, 1)
    return float((p * np.log(1.0 / p)).sum())
