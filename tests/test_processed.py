"""Merging, k-core, split, indexing, the processed format and its atomic writing."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data_prep.atomic import atomic_folder, recover
from data_prep.errors import DataPrepError
from data_prep.kcore import kcore_mask, merge_duplicates
from data_prep.prepare import prepare
from data_prep.processed import build_processed, dataset_hash, load_processed
from data_prep.raw import RawBuilder
from data_prep.split import held_out_count


def synthetic_raw(n_users: int = 60, n_items: int = 40, seed: int = 0, reviews: bool = True):
    """User u0 with 2 interactions, the rest 3..29; one duplicate per user; reviews everywhere."""
    rng = np.random.default_rng(seed)
    builder = RawBuilder("synthetic", "generic")
    for u in range(n_users):
        n = 2 if u == 0 else int(rng.integers(3, 30))
        for j in rng.choice(n_items, size=n, replace=False):
            builder.add_interaction(f"u{u}", f"i{j}", int(rng.integers(0, 10_000)),
                                    review=f"review of i{j} by u{u}" if reviews else "")
        builder.add_interaction(f"u{u}", f"i{j}", 99_999, review="late duplicate")
    for j in range(0, n_items, 2):
        builder.set_item_text(f"i{j}", f"item {j} text")
    builder.set_user_text("u1", "bio of u1")
    return builder.build()


def test_merge_duplicates_keeps_earliest():
    users = np.array([0, 0, 1, 0, 1])
    items = np.array([5, 5, 5, 6, 5])
    times = np.array([30, 10, 7, 1, 7])
    keep = merge_duplicates(users, items, times)
    assert keep.tolist() == [1, 2, 3]  # (0,5)@10, (1,5)@7 first of the tie, (0,6)@1


def test_kcore_invariants():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 200, size=3000)
    items = rng.zipf(1.6, size=3000) % 300
    for k in (2, 5, 10):
        mask, _ = kcore_mask(users, items, k)
        assert np.bincount(users[mask])[np.unique(users[mask])].min() >= k
        assert np.bincount(items[mask])[np.unique(items[mask])].min() >= k
        # maximal: removed rows could not be added back
        assert mask.sum() > 0
    assert kcore_mask(users, items, 0)[0].all()


@pytest.mark.parametrize("n,expected", [(3, 1), (5, 1), (14, 1), (15, 2), (20, 2), (25, 3), (700, 70)])
def test_held_out_count(n, expected):
    assert held_out_count(n) == expected


def test_split_invariants_and_reviews():
    raw = synthetic_raw()
    ds = build_processed(raw, kcore=0, seed=3)
    assert ds.stats["duplicates_merged"] == 60
    # users with fewer than 3 distinct items are dropped and counted
    assert ds.stats["users_dropped_too_few"] == 1 and "u0" not in ds.user_raw
    assert ds.n_users == 60 - ds.stats["users_dropped_too_few"]
    pairs = set(zip(ds.inter_user.tolist(), ds.inter_item.tolist()))
    assert len(pairs) == ds.inter_user.shape[0]  # no duplicates, splits disjoint
    assert set(np.unique(ds.inter_user)) == set(range(ds.n_users))
    assert set(np.unique(ds.inter_item)) == set(range(ds.n_items))
    for u in range(ds.n_users):
        split = ds.inter_split[ds.inter_user == u]
        n = split.shape[0]
        assert (split == 1).sum() == (split == 2).sum() == held_out_count(n)
        assert (split == 0).sum() == n - 2 * held_out_count(n) >= 1
    counts = np.bincount(ds.inter_split) / ds.inter_split.shape[0]
    assert abs(counts[0] - 0.8) < 0.06 and abs(counts[1] - 0.1) < 0.03
    train_pairs = set(zip(ds.inter_user[ds.inter_split == 0].tolist(), ds.inter_item[ds.inter_split == 0].tolist()))
    review_pairs = set(zip(ds.review_user.tolist(), ds.review_item.tolist()))
    assert review_pairs == train_pairs  # every training review kept, none from val/test
    assert ds.stats["reviews_dropped_heldout"] == int((ds.inter_split != 0).sum())
    assert "late duplicate" not in ds.review_text  # the earliest duplicate's review is kept


def test_natural_index_order_and_texts():
    ds = build_processed(synthetic_raw(), kcore=0, seed=0)
    numbers = [int(r[1:]) for r in ds.item_raw]
    assert ds.item_raw == sorted(ds.item_raw)  # non-integer ids: lexicographic
    assert all(ds.item_text[k] == (f"item {n} text" if n % 2 == 0 else "") for k, n in enumerate(numbers))
    assert ds.user_text[ds.user_raw.index("u1")] == "bio of u1" if "u1" in ds.user_raw else True


def test_round_trip_and_determinism(tmp_path):
    raw = synthetic_raw()
    a = prepare(raw, tmp_path / "a", seed=7)
    prepare(raw, tmp_path / "b", seed=7)
    prepare(raw, tmp_path / "c", seed=8)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["interactions.parquet", "items.parquet", "meta.json", "reviews.parquet", "users.parquet"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "interactions.parquet").read_bytes() != (tmp_path / "c" / "interactions.parquet").read_bytes()
    loaded = load_processed(tmp_path / "a")
    for field in ("user_raw", "user_text", "item_raw", "item_text", "review_text"):
        assert getattr(loaded, field) == getattr(a, field)
    for field in ("inter_user", "inter_item", "inter_time", "inter_split", "review_user", "review_item"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(a, field))
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["counts"]["users"] == loaded.n_users and meta["split"]["seed"] == 7
    assert "interaction" in json.dumps(meta["templates"]["prompts"])
    indptr, indices = loaded.split_csr("train")
    assert indptr[-1] == meta["counts"]["train"] and indices.shape[0] == meta["counts"]["train"]
    assert len(dataset_hash(tmp_path / "a")) == 64


def test_corrupted_file_is_refused(tmp_path):
    prepare(synthetic_raw(), tmp_path / "d")
    path = tmp_path / "d" / "items.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataPrepError, match="items.parquet: sha256 differs"):
        load_processed(tmp_path / "d")
    with pytest.raises(DataPrepError, match="meta.json missing"):
        load_processed(tmp_path / "nowhere")


def test_empty_after_filter_names_the_filter(tmp_path):
    with pytest.raises(DataPrepError, match="50-core filter removed every interaction"):
        prepare(synthetic_raw(), tmp_path / "e", kcore=50)
    builder = RawBuilder("tiny", "generic")
    builder.add_interaction("a", "x")
    builder.add_interaction("a", "y")
    with pytest.raises(DataPrepError, match="no user has the 3 interactions"):
        prepare(builder.build(), tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_failed_prepare_keeps_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    prepare(synthetic_raw(seed=0), out, seed=0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import data_prep.processed as processed

    def broken(*args, **kwargs):
        raise KeyboardInterrupt("interrupted while writing")

    monkeypatch.setattr(processed.pq, "write_table", broken)
    with pytest.raises(KeyboardInterrupt):
        prepare(synthetic_raw(seed=1), out, seed=0)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_crash_between_renames_recovers(tmp_path):
    out = tmp_path / "ds"
    with atomic_folder(out) as tmp:
        (tmp / "meta.json").write_text("{}")
    # simulate a crash after the old folder was renamed aside but before the new one came in
    os.rename(out, tmp_path / ".ds.old-abc")
    (tmp_path / ".ds.tmp-xyz").mkdir()
    recover(out)
    assert (out / "meta.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ds.") and "lock" not in p.name) == []


def test_atomic_file_gets_ordinary_permissions(tmp_path):
    """A file written through a (private) temp file ends up with the permissions of any new file under
    the process's umask, so run folders on a shared filesystem stay readable by the team."""
    from data_prep.atomic import atomic_write_text

    atomic_write_text(tmp_path / "results.json", "{}")
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600
