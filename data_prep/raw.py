"""The common intermediate every reader produces: raw-id interactions plus optional texts.

Readers only parse their format into a `RawDataset`; merging, filtering, indexing and splitting
happen once, in `data_prep.processed`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RawDataset:
    """Interactions by raw id, with optional per-interaction review text and per-entity texts.

    user_ids / item_ids: raw ids in order of first appearance (their position is a provisional code).
    inter_user, inter_item: int64 [n] provisional codes; inter_time: int64 [n] unix seconds (0 if
    unknown); inter_review: [n] review text ('' when none). user_text / item_text: raw id -> text.
    """

    name: str
    source: str
    user_ids: list[str]
    item_ids: list[str]
    inter_user: np.ndarray
    inter_item: np.ndarray
    inter_time: np.ndarray
    inter_review: list[str]
    user_text: dict[str, str]
    item_text: dict[str, str]
    has_time: bool
    stats: dict[str, int] = field(default_factory=dict)
    text_templates: dict[str, str] = field(default_factory=dict)

    @property
    def n_interactions(self) -> int:
        return int(self.inter_user.shape[0])


class RawBuilder:
    """Accumulates interactions and texts from a reader, assigning provisional integer codes."""

    def __init__(self, name: str, source: str):
        self.name = name
        self.source = source
        self._user_code: dict[str, int] = {}
        self._item_code: dict[str, int] = {}
        self._users: list[int] = []
        self._items: list[int] = []
        self._times: list[int] = []
        self._reviews: list[str] = []
        self._has_time = False
        self.user_text: dict[str, str] = {}
        self.item_text: dict[str, str] = {}
        self.stats: dict[str, int] = {}
        self.text_templates: dict[str, str] = {}

    @staticmethod
    def _code(table: dict[str, int], raw_id: str) -> int:
        code = table.get(raw_id)
        if code is None:
            code = table[raw_id] = len(table)
        return code

    def add_interaction(self, user: str, item: str, time: int | None = None, review: str = "") -> None:
        """Record that `user` interacted with `item` at unix second `time` (None: unknown)."""
        self._users.append(self._code(self._user_code, str(user)))
        self._items.append(self._code(self._item_code, str(item)))
        if time is not None:
            self._has_time = True
        self._times.append(int(time) if time is not None else 0)
        self._reviews.append(review or "")

    def set_user_text(self, user: str, text: str) -> None:
        if text:
            self.user_text[str(user)] = text

    def set_item_text(self, item: str, text: str) -> None:
        if text:
            self.item_text[str(item)] = text

    def build(self) -> RawDataset:
        return RawDataset(
            name=self.name,
            source=self.source,
            user_ids=list(self._user_code),
            item_ids=list(self._item_code),
            inter_user=np.asarray(self._users, dtype=np.int64),
            inter_item=np.asarray(self._items, dtype=np.int64),
            inter_time=np.asarray(self._times, dtype=np.int64),
            inter_review=self._reviews,
            user_text=self.user_text,
            item_text=self.item_text,
            has_time=self._has_time,
            stats=dict(self.stats),
            text_templates=dict(self.text_templates),
        )


def join_text(parts: list[str], sep: str = " ") -> str:
    """Join the non-empty, stripped parts; collapses internal whitespace runs to single spaces."""
    cleaned = [" ".join(str(p).split()) for p in parts if p is not None]
    return sep.join(p for p in cleaned if p)
