"""The grown catalogue of a fold-in (`trainer/fold_in.py`): a trained model's processed dataset plus new
users, items and interactions, checked against it.

Old users and items keep their indices; new ones follow, in file order (users of the users table,
then users seen only in the interactions). The new users' interactions are training interactions
(their prompt history when serving), and their reviews training reviews (the content LLM's
documents); repeated (user, item) pairs are merged as `prepare` does (the earliest time wins). Val
and test interactions, the old reviews and the split seed stay the old dataset's.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from data_prep.errors import DataPrepError
from data_prep.kcore import merge_duplicates
from data_prep.processed import ProcessedDataset
from data_prep.readers.generic import where
from data_prep.readers.new_entities import NewEntities
from data_prep.split import TRAIN
from trainer.rest import echo_ids


def check_new(new: NewEntities, dataset: ProcessedDataset) -> None:
    """Raise DataPrepError naming file and column for ids already in the model (a few of them), for a
    new interaction of a user the model has, with an item neither in the model nor new, or for a review
    of no new interaction."""
    for kind, texts, spec, known in (("item", new.items, new.items_spec, dataset.item_raw),
                                     ("user", new.users, new.users_spec, dataset.user_raw)):
        taken = set(known)
        clash = [raw for raw in texts if raw in taken]
        if clash:
            raise DataPrepError(f"{spec.path}: column '{spec.id}': {len(clash)} {kind} id(s) already in the model: "
                                f"{echo_ids(clash)} (fold-in adds new {kind}s only)")
    spec = new.interactions_spec
    old_users, items = set(dataset.user_raw), set(dataset.item_raw) | set(new.items)
    for row in new.interactions:
        if row.user in old_users:
            raise DataPrepError(f"{where(spec.path, row.row)}: column '{spec.user}': user {row.user!r} is already in "
                                f"the model (fold-in adds the interactions of new users only)")
        if row.item not in items:
            raise DataPrepError(f"{where(spec.path, row.row)}: column '{spec.item}': unknown item {row.item!r}: "
                                f"neither in the model nor among the new items")
    pairs = {(row.user, row.item) for row in new.interactions}
    stray = [pair for pair in new.reviews if pair not in pairs]
    if stray:
        review = new.reviews_spec
        raise DataPrepError(f"{review.path}: columns '{review.user}', '{review.item}': {len(stray)} review(s) of no new "
                            f"interaction, e.g. user {stray[0][0]!r}, item {stray[0][1]!r} (fold-in reads the reviews "
                            f"of the new users' interactions, given with --interactions)")


def grow_dataset(old: ProcessedDataset, new: NewEntities) -> ProcessedDataset:
    """`old` with the new users, items and (training) interactions appended; see the module docstring."""
    check_new(new, old)
    extra_users = new.interaction_users()
    if not (new.items or new.users or extra_users):
        raise DataPrepError("fold-in: the given tables hold no new item or user")
    user_raw = old.user_raw + list(new.users) + extra_users
    item_raw = old.item_raw + list(new.items)
    user_index = {raw: i for i, raw in enumerate(user_raw)}
    item_index = {raw: j for j, raw in enumerate(item_raw)}
    users = np.array([user_index[r.user] for r in new.interactions], dtype=np.int64)
    items = np.array([item_index[r.item] for r in new.interactions], dtype=np.int64)
    times = np.array([r.time for r in new.interactions], dtype=np.int64)
    keep = merge_duplicates(users, items, times)
    keep = keep[np.lexsort((items[keep], times[keep], users[keep]))]  # the (user, timestamp, item) order
    texts = [new.reviews.get((new.interactions[k].user, new.interactions[k].item), "") for k in keep]
    reviewed = np.flatnonzero([bool(t) for t in texts])
    added = {"users": len(user_raw) - old.n_users, "items": len(new.items), "interactions": int(keep.shape[0]),
             "reviews": int(reviewed.shape[0]), "duplicates_merged": len(new.interactions) - int(keep.shape[0]),
             **new.stats}
    return replace(
        old,
        user_raw=user_raw,
        user_text=old.user_text + list(new.users.values()) + [""] * len(extra_users),
        item_raw=item_raw,
        item_text=old.item_text + list(new.items.values()),
        inter_user=np.concatenate([old.inter_user, users[keep]]),
        inter_item=np.concatenate([old.inter_item, items[keep]]),
        inter_time=np.concatenate([old.inter_time, times[keep]]),
        inter_split=np.concatenate([old.inter_split, np.full(keep.shape[0], TRAIN, dtype=old.inter_split.dtype)]),
        review_user=np.concatenate([old.review_user, users[keep][reviewed]]).astype(old.review_user.dtype),
        review_item=np.concatenate([old.review_item, items[keep][reviewed]]).astype(old.review_item.dtype),
        review_text=old.review_text + [texts[k] for k in reviewed],
        stats={**old.stats, **{f"fold_in_{key}": value for key, value in added.items()}},
        meta={},
    )
