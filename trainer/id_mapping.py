"""The rows of an earlier model for a dataset prepared again later, matched by raw id (`cllm4rec train
--init-from`, docs/incremental.md): which users and items are kept, which are new, which were removed."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.processed import ProcessedDataset

KINDS = ("users", "items")


def earlier_rows(earlier: list[str], later: list[str]) -> np.ndarray:
    """int64 [len(later)]: the index in `earlier` of each raw id of `later`, -1 where it has none (new)."""
    index = {raw: i for i, raw in enumerate(earlier)}
    return np.array([index.get(raw, -1) for raw in later], dtype=np.int64)


@dataclass(frozen=True)
class IdMapping:
    """users [N'] / items [J']: the earlier model's row of each user / item of the later dataset (-1: new);
    new / removed: the raw ids only the later / only the earlier dataset has, per kind, in index order."""

    users: np.ndarray
    items: np.ndarray
    new: dict[str, list[str]]
    removed: dict[str, list[str]]

    @classmethod
    def between(cls, earlier: ProcessedDataset, later: ProcessedDataset) -> IdMapping:
        raws = {"users": (earlier.user_raw, later.user_raw), "items": (earlier.item_raw, later.item_raw)}
        rows = {kind: earlier_rows(old, new) for kind, (old, new) in raws.items()}
        new = {kind: [raw for raw, row in zip(raws[kind][1], rows[kind]) if row < 0] for kind in KINDS}
        removed = {kind: missing_from(new_ids, old) for kind, (old, new_ids) in raws.items()}
        return cls(rows["users"], rows["items"], new, removed)

    def rows(self, kind: str) -> np.ndarray:
        """`users` or `items`."""
        return self.users if kind == "users" else self.items

    def counts(self) -> dict[str, dict[str, int]]:
        """{"users": {"kept", "new", "removed"}, "items": {...}}."""
        return {kind: {"kept": int((self.rows(kind) >= 0).sum()), "new": len(self.new[kind]),
                       "removed": len(self.removed[kind])} for kind in KINDS}

    def summary(self) -> str:
        return counts_summary(self.counts())


def counts_summary(counts: dict[str, dict[str, int]]) -> str:
    """`IdMapping.counts()` in words, e.g. 'users 76 kept, 4 new, 2 removed; items 38 kept, 2 new, 1 removed'."""
    return "; ".join(f"{kind} " + ", ".join(f"{n:,} {what}" for what, n in per_kind.items())
                     for kind, per_kind in counts.items())


def missing_from(later: list[str], earlier: list[str]) -> list[str]:
    """The raw ids of `earlier` that `later` lacks, in `earlier`'s order."""
    kept = set(later)
    return [raw for raw in earlier if raw not in kept]
