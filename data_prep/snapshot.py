"""An earlier snapshot of a processed dataset, for measuring incremental training (`train --init-from`,
docs/incremental.md) without leaks: what the data looked like "a week before".

The snapshot holds only the later dataset's training interactions, so a model trained on it never saw the
later validation or test interactions. From those it leaves out every interaction of a seeded share of
the items and of the users (new since), then the newest of the rest (ties in a seeded order) until the
later training split holds `1 + interactions` times as many interactions as the snapshot. Texts and the
training reviews of what is kept stay as they were. It comes back as a `RawBuilder`, so a caller may add
ids the later data no longer has (removed since) before `build()`; prepare it like any raw dataset.
"""
from __future__ import annotations

import numpy as np

from data_prep.processed import ProcessedDataset
from data_prep.raw import RawBuilder
from data_prep.split import TRAIN


def drawn(count: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """bool [count]: round(share × count) entries drawn at random."""
    mask = np.zeros(count, dtype=bool)
    mask[rng.choice(count, int(round(share * count)), replace=False)] = True
    return mask


def snapshot_builder(later: ProcessedDataset, *, interactions: float = 0.1, items: float = 0.05, users: float = 0.0,
                     seed: int = 0) -> RawBuilder:
    """The earlier snapshot of `later` (module docstring), named `<later name>-earlier`."""
    rng = np.random.default_rng(seed)
    new_items, new_users = drawn(later.n_items, items, rng), drawn(later.n_users, users, rng)
    train = np.flatnonzero(later.inter_split == TRAIN)
    kept = train[~new_items[later.inter_item[train]] & ~new_users[later.inter_user[train]]]
    size = min(kept.shape[0], int(round(train.shape[0] / (1 + interactions))))
    kept = np.sort(kept[np.lexsort((rng.random(kept.shape[0]), later.inter_time[kept]))][:size])
    reviews = dict(zip(zip(later.review_user.tolist(), later.review_item.tolist()), later.review_text))
    builder = RawBuilder(f"{later.name}-earlier", later.source)
    for row in kept:
        user, item = int(later.inter_user[row]), int(later.inter_item[row])
        builder.add_interaction(later.user_raw[user], later.item_raw[item], int(later.inter_time[row]),
                                reviews.get((user, item), ""))
    for raw, text in zip(later.user_raw, later.user_text):
        builder.set_user_text(raw, text)
    for raw, text in zip(later.item_raw, later.item_text):
        builder.set_item_text(raw, text)
    builder.text_templates = dict(later.text_templates)
    return builder
