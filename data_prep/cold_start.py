"""Cold-start splits (`cllm4rec prepare cold-start`, docs/fold_in.md section 5): a processed dataset
without a seeded share of its items, with those items' texts and every interaction they had kept aside.

The variant is an ordinary processed dataset (train on it with `data.dataset=<folder>`): every
interaction of a held-out item is removed, and the rest is indexed and split again by the split rule
and seed of the source (a user left with fewer than 3 interactions is dropped, as `prepare` does).
Kept aside in the same folder, written with it whole or not at all and pinned in its meta.json
("extra_files"), never read by training:

- `heldout/items.parquet`: item (raw id), text — what fold-in reads;
- `heldout/interactions.parquet`: user, item (raw ids), timestamp, split (the source's) — every
  interaction of a held-out item, the evaluation's targets.

meta.json's field "cold_start" records the hold-out seed and fraction, the source dataset (name, path,
hash) and the counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from data_prep.errors import DataPrepError
from data_prep.processed import (ProcessedDataset, build_processed, dataset_hash, load_processed, read_extra,
                                 read_meta, write_processed)
from data_prep.raw import RawDataset
from data_prep.split import SPLIT_NAMES

FIELD = "cold_start"
ITEMS = "heldout/items.parquet"
INTERACTIONS = "heldout/interactions.parquet"


@dataclass(frozen=True)
class HeldOutItems:
    """The held-out part of a cold-start split. texts: raw item id -> text (file order); users / items:
    [n] raw ids of every held-out interaction; info: meta.json's "cold_start"; path: the split's folder."""

    path: Path
    texts: dict[str, str]
    users: list[str]
    items: list[str]
    info: dict[str, Any]


def pick_items(dataset: ProcessedDataset, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices [round(fraction·J)] of the items to hold out, drawn with `seed` from the items with a
    text (fold-in places an item by its text)."""
    if not 0 < fraction < 1:
        raise DataPrepError(f"cold-start split: --fraction must lie in (0, 1), got {fraction}")
    count = max(1, int(np.floor(fraction * dataset.n_items + 0.5)))
    with_text = np.flatnonzero([bool(t) for t in dataset.item_text])
    if count >= dataset.n_items or with_text.shape[0] < count:
        raise DataPrepError(f"dataset {dataset.name}: cannot hold out {count} of {dataset.n_items} items "
                            f"({with_text.shape[0]} have a text); lower --fraction")
    return np.sort(np.random.default_rng(seed).choice(with_text, size=count, replace=False))


def without_items(dataset: ProcessedDataset, held: np.ndarray) -> RawDataset:
    """`dataset` as raw input with every interaction of the items `held` removed; training reviews of the
    kept interactions stay (a review the new split holds out is dropped again by `build_processed`)."""
    keep = ~np.isin(dataset.inter_item, held)
    reviews = {(int(u), int(j)): t for u, j, t in zip(dataset.review_user, dataset.review_item, dataset.review_text)}
    users, items = dataset.inter_user[keep], dataset.inter_item[keep]
    return RawDataset(
        name=f"{dataset.name}-cold-items", source=dataset.source, user_ids=list(dataset.user_raw),
        item_ids=list(dataset.item_raw), inter_user=users, inter_item=items, inter_time=dataset.inter_time[keep],
        inter_review=[reviews.get((int(u), int(j)), "") for u, j in zip(users, items)],
        user_text={r: t for r, t in zip(dataset.user_raw, dataset.user_text) if t},
        item_text={r: t for r, t in zip(dataset.item_raw, dataset.item_text) if t},
        has_time=bool(dataset.inter_time.any()), text_templates=dict(dataset.text_templates))


def heldout_tables(dataset: ProcessedDataset, held: np.ndarray) -> dict[str, pa.Table]:
    """The aside files: the held-out items' texts, and all their interactions in the dataset's order."""
    rows = np.flatnonzero(np.isin(dataset.inter_item, held))
    return {
        ITEMS: pa.table({"item": pa.array([dataset.item_raw[j] for j in held], pa.string()),
                         "text": pa.array([dataset.item_text[j] for j in held], pa.string())}),
        INTERACTIONS: pa.table({
            "user": pa.array([dataset.user_raw[u] for u in dataset.inter_user[rows]], pa.string()),
            "item": pa.array([dataset.item_raw[j] for j in dataset.inter_item[rows]], pa.string()),
            "timestamp": pa.array(dataset.inter_time[rows], pa.int64()),
            "split": pa.array([SPLIT_NAMES[s] for s in dataset.inter_split[rows]], pa.string()),
        }),
    }


def write_cold_start(source: Path, out: Path, *, fraction: float = 0.1, seed: int = 0) -> ProcessedDataset:
    """Write the cold-start split of the processed dataset `source` to `out` (module docstring), whole or not
    at all; returns the variant."""
    dataset = load_processed(Path(source))
    held = pick_items(dataset, fraction, seed)
    variant = build_processed(without_items(dataset, held), kcore=0, seed=dataset.seed)
    tables = heldout_tables(dataset, held)
    interactions = tables[INTERACTIONS]
    info = {"kind": "items", "seed": seed, "fraction": fraction,
            "source": {"name": dataset.name, "path": str(Path(source).resolve()), "dataset_hash": dataset_hash(source),
                       "kcore": dataset.kcore},
            "heldout_items": int(held.shape[0]), "heldout_interactions": interactions.num_rows,
            "heldout_users": len(set(interactions["user"].to_pylist())),
            "users_dropped": dataset.n_users - variant.n_users,
            "items_dropped": dataset.n_items - int(held.shape[0]) - variant.n_items}
    write_processed(variant, out, read_meta(source)["templates"]["prompts"], extra_tables=tables,
                    extra_meta={FIELD: info})
    return variant


def read_heldout(path: Path) -> HeldOutItems:
    """The held-out part of the cold-start split in dataset folder `path`, every file checked against its
    meta.json; DataPrepError naming meta.json when the folder is not a cold-start split."""
    meta = read_meta(path)
    if FIELD not in meta:
        raise DataPrepError(f"{Path(path) / 'meta.json'}: no field {FIELD!r}: {path} is not a cold-start split; "
                            f"make one with `cllm4rec prepare cold-start DATASET` and train on it")
    items, interactions = read_extra(path, ITEMS), read_extra(path, INTERACTIONS)
    return HeldOutItems(Path(path), dict(zip(items["item"].to_pylist(), items["text"].to_pylist())),
                        interactions["user"].to_pylist(), interactions["item"].to_pylist(), meta[FIELD])
