"""The processed-dataset format (docs/data.md, section 3): build it from a `RawDataset`, write it whole, load it back.

Folder layout: meta.json, users.parquet (user, raw_id, text), items.parquet (item, raw_id, text),
interactions.parquet (user, item, timestamp, split), reviews.parquet (user, item, text; training
interactions only). Same raw input and seed → byte-identical files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cllm4rec.templates import ContentKind
from data_prep.atomic import atomic_folder, recover, sha256_file
from data_prep.errors import DataPrepError
from data_prep.kcore import kcore_mask, merge_duplicates
from data_prep.raw import RawDataset
from data_prep.split import MIN_INTERACTIONS, SPLIT_NAMES, TRAIN, split_per_user

SCHEMA_VERSION = 1
FILES = ("users.parquet", "items.parquet", "interactions.parquet", "reviews.parquet")


@dataclass
class ProcessedDataset:
    """A prepared dataset in memory. Users are 0..n_users-1 and items 0..n_items-1.

    inter_*: [n] arrays sorted by (user, timestamp, item); inter_split holds 0/1/2 = train/val/test.
    review_*: reviews of training interactions only.
    """

    name: str
    source: str
    seed: int
    kcore: int
    user_raw: list[str]
    user_text: list[str]
    item_raw: list[str]
    item_text: list[str]
    inter_user: np.ndarray
    inter_item: np.ndarray
    inter_time: np.ndarray
    inter_split: np.ndarray
    review_user: np.ndarray
    review_item: np.ndarray
    review_text: list[str]
    stats: dict[str, int] = field(default_factory=dict)
    text_templates: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_raw)

    @property
    def n_items(self) -> int:
        return len(self.item_raw)

    def split_csr(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(indptr [n_users+1], indices [nnz]) of each user's items in `split` (train/val/test)."""
        code = SPLIT_NAMES.index(split)
        mask = self.inter_split == code
        users, items = self.inter_user[mask], self.inter_item[mask]
        counts = np.bincount(users, minlength=self.n_users)
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, items.astype(np.int64)

    def content_samples(self) -> list[dict[str, Any]]:
        """The content corpus in canonical order: biographies, item texts, training reviews (empty texts
        left out), each {"kind": a `ContentKind`, "user", "item", "text"} (-1: none). Training
        (trainer/data.py) and the shards (data_prep/shards.py) both read it from here."""
        samples = [{"kind": ContentKind.BIOGRAPHY, "user": u, "item": -1, "text": t}
                   for u, t in enumerate(self.user_text) if t]
        samples += [{"kind": ContentKind.ITEM_TEXT, "user": -1, "item": j, "text": t}
                    for j, t in enumerate(self.item_text) if t]
        samples += [{"kind": ContentKind.REVIEW, "user": int(u), "item": int(j), "text": t}
                    for u, j, t in zip(self.review_user, self.review_item, self.review_text) if t]
        return samples

    def counts(self) -> dict[str, int]:
        split_counts = np.bincount(self.inter_split, minlength=3)
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": int(self.inter_user.shape[0]),
            "train": int(split_counts[0]),
            "val": int(split_counts[1]),
            "test": int(split_counts[2]),
            "reviews": len(self.review_text),
            "users_with_text": sum(1 for t in self.user_text if t),
            "items_with_text": sum(1 for t in self.item_text if t),
        }


def _natural_order(raw_ids: list[str]) -> list[str]:
    """Integer-like ids sorted numerically, otherwise lexicographically (deterministic, readable)."""
    if all(r.lstrip("-").isdigit() for r in raw_ids):
        return sorted(raw_ids, key=lambda r: (int(r), r))
    return sorted(raw_ids)


def _reindex(codes: np.ndarray, raw_ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Map the provisional codes present in `codes` to contiguous indices in natural raw-id order."""
    present = np.unique(codes)
    ordered = _natural_order([raw_ids[c] for c in present])
    position = {raw: i for i, raw in enumerate(ordered)}
    lookup = np.full(len(raw_ids), -1, dtype=np.int64)
    for code in present:
        lookup[code] = position[raw_ids[code]]
    return lookup[codes], ordered


def build_processed(raw: RawDataset, *, kcore: int, seed: int) -> ProcessedDataset:
    """Merge duplicates, k-core filter, drop users with < 3 interactions, index, split, attach texts."""
    if raw.n_interactions == 0:
        raise DataPrepError(f"dataset '{raw.name}': the input has no interactions")
    stats = dict(raw.stats)
    keep = merge_duplicates(raw.inter_user, raw.inter_item, raw.inter_time)
    stats["duplicates_merged"] = raw.n_interactions - int(keep.shape[0])
    users, items, times = raw.inter_user[keep], raw.inter_item[keep], raw.inter_time[keep]
    reviews = [raw.inter_review[i] for i in keep]

    core, rounds = kcore_mask(users, items, kcore)
    stats["kcore_removed_interactions"] = int((~core).sum())
    if not core.any():
        raise DataPrepError(
            f"dataset '{raw.name}': the {kcore}-core filter removed every interaction "
            f"({len(np.unique(users))} users, {len(np.unique(items))} items before it); lower --kcore"
        )
    per_user = np.bincount(users[core], minlength=len(raw.user_ids))
    enough = core & (per_user[users] >= MIN_INTERACTIONS)
    stats["users_dropped_too_few"] = int(((per_user > 0) & (per_user < MIN_INTERACTIONS)).sum())
    if not enough.any():
        raise DataPrepError(
            f"dataset '{raw.name}': no user has the {MIN_INTERACTIONS} interactions needed for the "
            f"train/validation/test split ({stats['users_dropped_too_few']} users dropped)"
        )
    rows = np.flatnonzero(enough)
    user_idx, user_raw = _reindex(users[rows], raw.user_ids)
    item_idx, item_raw = _reindex(items[rows], raw.item_ids)
    times = times[rows]
    order = np.lexsort((item_idx, times, user_idx))
    user_idx, item_idx, times = user_idx[order], item_idx[order], times[order]
    reviews = [reviews[rows[i]] for i in order]
    split = split_per_user(user_idx, len(user_raw), seed)

    has_review = np.array([bool(r) for r in reviews], dtype=bool)
    kept_reviews = np.flatnonzero(has_review & (split == TRAIN))
    stats["reviews_dropped_heldout"] = int((has_review & (split != TRAIN)).sum())
    return ProcessedDataset(
        name=raw.name,
        source=raw.source,
        seed=seed,
        kcore=kcore,
        user_raw=user_raw,
        user_text=[raw.user_text.get(r, "") for r in user_raw],
        item_raw=item_raw,
        item_text=[raw.item_text.get(r, "") for r in item_raw],
        inter_user=user_idx,
        inter_item=item_idx,
        inter_time=times,
        inter_split=split,
        review_user=user_idx[kept_reviews],
        review_item=item_idx[kept_reviews],
        review_text=[reviews[i] for i in kept_reviews],
        stats=stats,
        text_templates=dict(raw.text_templates),
    )


def _tables(ds: ProcessedDataset) -> dict[str, pa.Table]:
    return {
        "users.parquet": pa.table({
            "user": pa.array(np.arange(ds.n_users), pa.int64()),
            "raw_id": pa.array(ds.user_raw, pa.string()),
            "text": pa.array(ds.user_text, pa.string()),
        }),
        "items.parquet": pa.table({
            "item": pa.array(np.arange(ds.n_items), pa.int64()),
            "raw_id": pa.array(ds.item_raw, pa.string()),
            "text": pa.array(ds.item_text, pa.string()),
        }),
        "interactions.parquet": pa.table({
            "user": pa.array(ds.inter_user, pa.int64()),
            "item": pa.array(ds.inter_item, pa.int64()),
            "timestamp": pa.array(ds.inter_time, pa.int64()),
            "split": pa.array([SPLIT_NAMES[s] for s in ds.inter_split], pa.string()).dictionary_encode(),
        }),
        "reviews.parquet": pa.table({
            "user": pa.array(ds.review_user, pa.int64()),
            "item": pa.array(ds.review_item, pa.int64()),
            "text": pa.array(ds.review_text, pa.string()),
        }),
    }


def _write_tables(folder: Path, tables: Mapping[str, pa.Table]) -> dict[str, dict[str, Any]]:
    """Write each table to folder/<name> (subfolders made); their {"sha256", "bytes"} by name."""
    files = {}
    for name, table in tables.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / name, compression="zstd")
        files[name] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    return files


def write_processed(ds: ProcessedDataset, out_dir: Path, prompt_templates: dict[str, str], *,
                    extra_tables: Mapping[str, pa.Table] | None = None,
                    extra_meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write `ds` to `out_dir` whole or not at all; returns the meta.json content.

    extra_tables: Parquet files kept in the folder beside the dataset but not part of it (relative name ->
    table; a cold-start split's held-out part), pinned in meta.json's "extra_files" like the dataset's own
    (`read_extra` reads one back); extra_meta: further meta.json fields.
    """
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as tmp:
        files = _write_tables(tmp, _tables(ds))
        meta = {
            "schema_version": SCHEMA_VERSION,
            "name": ds.name,
            "source": ds.source,
            "split": {
                "seed": ds.seed,
                "rule": "per user at random: n_val = n_test = max(1, floor(0.1*n + 0.5)), rest train",
                "min_user_interactions": MIN_INTERACTIONS,
            },
            "kcore": ds.kcore,
            "counts": ds.counts(),
            "filters": ds.stats,
            "templates": {"text": ds.text_templates, "prompts": prompt_templates},
            "files": files,
            **({"extra_files": _write_tables(tmp, extra_tables)} if extra_tables else {}),
            **(extra_meta or {}),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    ds.meta = meta
    return meta


def dataset_hash(path: Path) -> str:
    """sha256 of a processed dataset's meta.json (which pins every file by checksum)."""
    return sha256_file(Path(path) / "meta.json")


def is_processed(path: Path) -> bool:
    """Whether the folder `path` holds a processed dataset: a meta.json naming its schema and files."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and "schema_version" in meta and isinstance(meta.get("files"), dict)


def read_meta(path: Path) -> dict[str, Any]:
    path = Path(path)
    recover(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise DataPrepError(
            f"{path}: not a processed dataset (meta.json missing); create it with `cllm4rec prepare`"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataPrepError(f"{meta_path}: line {err.lineno}: malformed JSON ({err.msg})") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DataPrepError(
            f"{meta_path}: field 'schema_version' is {meta.get('schema_version')!r}, this code reads "
            f"{SCHEMA_VERSION}; prepare the dataset again"
        )
    return meta


def _read_pinned(file: Path, pin: Mapping[str, Any] | None) -> pa.Table:
    """The Parquet table `file` of a processed dataset; refused when missing, or when its sha256 differs from
    `pin` (its meta.json entry; None: not checked)."""
    if not file.is_file():
        raise DataPrepError(f"{file}: missing from the processed dataset")
    if pin is not None and sha256_file(file) != pin["sha256"]:
        raise DataPrepError(f"{file}: sha256 differs from meta.json (file changed or corrupted)")
    return pq.read_table(file)


def read_extra(path: Path, name: str) -> pa.Table:
    """The extra table `name` that `write_processed` kept in dataset folder `path`, checked against meta.json."""
    meta = read_meta(path)
    pin = meta.get("extra_files", {}).get(name)
    if pin is None:
        raise DataPrepError(f"{Path(path) / 'meta.json'}: field 'extra_files' names no {name!r}")
    return _read_pinned(Path(path) / name, pin)


def load_processed(path: Path, verify: bool = True) -> ProcessedDataset:
    """Load a processed dataset; with `verify`, every file's sha256 must match meta.json."""
    path = Path(path)
    meta = read_meta(path)
    tables = {name: _read_pinned(path / name, meta["files"][name] if verify else None) for name in FILES}
    users, items = tables["users.parquet"], tables["items.parquet"]
    inter, reviews = tables["interactions.parquet"], tables["reviews.parquet"]
    split_codes = {name: code for code, name in enumerate(SPLIT_NAMES)}
    ds = ProcessedDataset(
        name=meta["name"],
        source=meta["source"],
        seed=meta["split"]["seed"],
        kcore=meta["kcore"],
        user_raw=users["raw_id"].to_pylist(),
        user_text=users["text"].to_pylist(),
        item_raw=items["raw_id"].to_pylist(),
        item_text=items["text"].to_pylist(),
        inter_user=inter["user"].to_numpy(),
        inter_item=inter["item"].to_numpy(),
        inter_time=inter["timestamp"].to_numpy(),
        inter_split=np.array([split_codes[s] for s in inter["split"].to_pylist()], dtype=np.int8),
        review_user=reviews["user"].to_numpy(),
        review_item=reviews["item"].to_numpy(),
        review_text=reviews["text"].to_pylist(),
        stats=meta["filters"],
        text_templates=meta["templates"]["text"],
        meta=meta,
    )
    if ds.counts() != meta["counts"]:
        raise DataPrepError(f"{path / 'meta.json'}: field 'counts' does not match the files")
    return ds
