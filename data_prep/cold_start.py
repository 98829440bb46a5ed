"""Cold-start splits (`cllm4rec prepare cold-start`, docs/fold_in.md section 5): a processed dataset
without a seeded share of its items (kind "items") or users ("users"), with what a fold-in and the
evaluation need of them kept aside.

The variant is an ordinary processed dataset (train on it with `data.dataset=<folder>`): every
interaction of a held-out item or user is removed, and the rest is indexed and split again by the split
rule and seed of the source (a user left with fewer than 3 interactions is dropped, as `prepare` does,
and an item only such users had goes with them). Kept aside in the same folder, written with it whole
or not at all and pinned in its meta.json ("extra_files"), never read by training:

- items: `heldout/items.parquet` (item, text): what fold-in reads; `heldout/interactions.parquet` (user,
  item, timestamp, split: the source's): every interaction of a held-out item, the evaluation's targets.
- users: `heldout/users.parquet` (user, text: the biography, maybe empty) and `heldout/history.parquet`
  (user, item, timestamp, and for a dataset with reviews `review`: the user's training review of the item,
  empty without one): each held-out user's earliest 1-3 interactions (the count drawn per user), what
  fold-in reads; `heldout/interactions.parquet`: the rest of their interactions, the targets. Only
  interactions with items the variant has are kept (the others are counted).

meta.json's field "cold_start" records the kind, the hold-out seed and fraction, the source dataset
(name, path, hash, k-core) and the counts.
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
KINDS = ("items", "users")
TEXTS = {"items": "heldout/items.parquet", "users": "heldout/users.parquet"}
HISTORY = "heldout/history.parquet"
INTERACTIONS = "heldout/interactions.parquet"
MAX_HISTORY = 3


@dataclass(frozen=True)
class HeldOut:
    """The held-out part of a cold-start split. kind: "items" or "users"; texts: raw id -> text of the
    held-out entities (file order); users / items: [n] raw ids of the target interactions; info: meta.json's
    "cold_start"; path: the split's folder; history_reviews: whether the users' history file has a `review`
    column."""

    path: Path
    kind: str
    texts: dict[str, str]
    users: list[str]
    items: list[str]
    info: dict[str, Any]
    history_reviews: bool = False


def pick_heldout(dataset: ProcessedDataset, kind: str, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices [round(fraction·count)] of the items or users to hold out, drawn with `seed`; items among
    those with a text (fold-in places an item by its text), users among all."""
    if kind not in KINDS:
        raise DataPrepError(f"cold-start split: --kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not 0 < fraction < 1:
        raise DataPrepError(f"cold-start split: --fraction must lie in (0, 1), got {fraction}")
    texts = dataset.item_text if kind == "items" else dataset.user_text
    candidates = np.flatnonzero([bool(t) for t in texts]) if kind == "items" else np.arange(len(texts))
    count = max(1, int(np.floor(fraction * len(texts) + 0.5)))
    if count >= len(texts) or candidates.shape[0] < count:
        raise DataPrepError(f"dataset {dataset.name}: cannot hold out {count} of {len(texts)} {kind} "
                            f"({candidates.shape[0]} eligible); lower --fraction")
    return np.sort(np.random.default_rng(seed).choice(candidates, size=count, replace=False))


def heldout_rows(dataset: ProcessedDataset, kind: str, held: np.ndarray) -> np.ndarray:
    """bool [n]: the interactions of the held-out items or users."""
    return np.isin(dataset.inter_item if kind == "items" else dataset.inter_user, held)


def review_texts(dataset: ProcessedDataset) -> dict[tuple[int, int], str]:
    """(user index, item index) -> the training review of that interaction."""
    return {(int(u), int(j)): t for u, j, t in zip(dataset.review_user, dataset.review_item, dataset.review_text)}


def without(dataset: ProcessedDataset, kind: str, held: np.ndarray) -> RawDataset:
    """`dataset` as raw input with every interaction of the held-out items or users removed; training
    reviews of the kept interactions stay (one the new split holds out is dropped by `build_processed`)."""
    keep = ~heldout_rows(dataset, kind, held)
    reviews = review_texts(dataset)
    users, items = dataset.inter_user[keep], dataset.inter_item[keep]
    return RawDataset(
        name=f"{dataset.name}-cold-{kind}", source=dataset.source, user_ids=list(dataset.user_raw),
        item_ids=list(dataset.item_raw), inter_user=users, inter_item=items, inter_time=dataset.inter_time[keep],
        inter_review=[reviews.get((int(u), int(j)), "") for u, j in zip(users, items)],
        user_text={r: t for r, t in zip(dataset.user_raw, dataset.user_text) if t},
        item_text={r: t for r, t in zip(dataset.item_raw, dataset.item_text) if t},
        has_time=bool(dataset.inter_time.any()), text_templates=dict(dataset.text_templates))


def _interactions(dataset: ProcessedDataset, rows: np.ndarray, split: bool = True, reviews: bool = False) -> pa.Table:
    """Interactions `rows` of `dataset` by raw id: user, item, timestamp (and the source's split; with
    `reviews`, each one's training review, empty without one)."""
    users, items = dataset.inter_user[rows], dataset.inter_item[rows]
    columns = {"user": pa.array([dataset.user_raw[u] for u in users], pa.string()),
               "item": pa.array([dataset.item_raw[j] for j in items], pa.string()),
               "timestamp": pa.array(dataset.inter_time[rows], pa.int64())}
    if split:
        columns["split"] = pa.array([SPLIT_NAMES[s] for s in dataset.inter_split[rows]], pa.string())
    if reviews:
        text = review_texts(dataset)
        columns["review"] = pa.array([text.get((int(u), int(j)), "") for u, j in zip(users, items)], pa.string())
    return pa.table(columns)


def _texts(raw: list[str], texts: list[str], held: np.ndarray, column: str) -> pa.Table:
    """The raw ids (column `column`) and texts of the entities `held`."""
    return pa.table({column: pa.array([raw[i] for i in held], pa.string()),
                     "text": pa.array([texts[i] for i in held], pa.string())})


def heldout_tables(dataset: ProcessedDataset, variant: ProcessedDataset, kind: str, held: np.ndarray,
                   seed: int) -> dict[str, pa.Table]:
    """The aside files of the module docstring, interactions in the dataset's (user, time, item) order; the
    held-out users' history sizes are drawn from `seed` (a generator of their own, after the draw of the users)."""
    rows = np.flatnonzero(heldout_rows(dataset, kind, held))
    if kind == "items":
        return {TEXTS[kind]: _texts(dataset.item_raw, dataset.item_text, held, "item"),
                INTERACTIONS: _interactions(dataset, rows)}
    known = set(variant.item_raw)
    rows = rows[[dataset.item_raw[j] in known for j in dataset.inter_item[rows]]]
    owners = dataset.inter_user[rows]  # each user's rows are consecutive, oldest first
    starts, ends = np.searchsorted(owners, held), np.searchsorted(owners, held, side="right")
    drawn = np.random.default_rng([seed, 1]).integers(1, MAX_HISTORY + 1, size=held.shape[0])
    first = np.zeros(rows.shape[0], bool)
    for start, size in zip(starts, np.minimum(drawn, np.maximum(ends - starts - 1, 0))):  # one target at least
        first[start : start + size] = True
    return {TEXTS[kind]: _texts(dataset.user_raw, dataset.user_text, held, "user"),
            HISTORY: _interactions(dataset, rows[first], split=False, reviews=bool(dataset.review_text)),
            INTERACTIONS: _interactions(dataset, rows[~first])}


def write_cold_start(source: Path, out: Path, *, kind: str = "items", fraction: float = 0.1,
                     seed: int = 0) -> ProcessedDataset:
    """Write the cold-start split of the processed dataset `source` to `out` (module docstring), whole or not
    at all; returns the variant."""
    dataset = load_processed(Path(source))
    held = pick_heldout(dataset, kind, fraction, seed)
    variant = build_processed(without(dataset, kind, held), kcore=0, seed=dataset.seed)
    tables = heldout_tables(dataset, variant, kind, held, seed)
    targets = tables[INTERACTIONS]
    history = tables[HISTORY].num_rows if HISTORY in tables else 0
    held_users, held_items = (0, held.shape[0]) if kind == "items" else (held.shape[0], 0)
    info = {"kind": kind, "seed": seed, "fraction": fraction,
            "source": {"name": dataset.name, "path": str(Path(source).resolve()), "dataset_hash": dataset_hash(source),
                       "kcore": dataset.kcore},
            "heldout": int(held.shape[0]), "heldout_interactions": targets.num_rows, "history_interactions": history,
            "heldout_users": len(set(targets["user"].to_pylist())),
            "interactions_unknown_item": int(heldout_rows(dataset, kind, held).sum()) - targets.num_rows - history,
            "users_dropped": dataset.n_users - held_users - variant.n_users,
            "items_dropped": dataset.n_items - held_items - variant.n_items}
    write_processed(variant, out, read_meta(source)["templates"]["prompts"], extra_tables=tables,
                    extra_meta={FIELD: info})
    return variant


def read_heldout(path: Path) -> HeldOut:
    """The held-out part of the cold-start split in dataset folder `path`, every file checked against its
    meta.json; DataPrepError naming meta.json when the folder is not a cold-start split."""
    meta = read_meta(path)
    if FIELD not in meta:
        raise DataPrepError(f"{Path(path) / 'meta.json'}: no field {FIELD!r}: {path} is not a cold-start split; "
                            f"make one with `cllm4rec prepare cold-start DATASET` and train on it")
    info = meta[FIELD]
    texts, targets = read_extra(path, TEXTS[info["kind"]]), read_extra(path, INTERACTIONS)
    reviews = info["kind"] == "users" and "review" in read_extra(path, HISTORY).column_names
    return HeldOut(Path(path), info["kind"], dict(zip(texts.column(0).to_pylist(), texts["text"].to_pylist())),
                   targets["user"].to_pylist(), targets["item"].to_pylist(), info, reviews)
