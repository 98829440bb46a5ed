"""The content-signal preset of scripts/amazon_sample.py (data_prep/planted_tastes.py): tastes planted in
item texts and reviews.

A small copy (120 users, 100 products, 8 themes) is generated, read and prepared (5-core, as `cllm4rec
prepare amazon`), and its planted properties are checked on the processed dataset against the
ground truth the generator writes. No backbone, no training.
"""
from __future__ import annotations

import gzip
import json
import re
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script
from data_prep import planted_tastes
from data_prep.planted_tastes import THEMES, Planted, write_planted
from data_prep.prepare import prepare
from data_prep.processed import load_processed
from data_prep.readers import read_amazon
from data_prep.synthetic_amazon import describe

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--users", "120", "--products", "100", "--themes", "8"]


@pytest.fixture(scope="module")
def script():
    """scripts/amazon_sample.py: the command line over the generator."""
    return load_script("amazon_sample")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(files, truth, processed dataset) of the small planted copy, seed 0."""
    spec = Planted(users=120, products=100, themes=8)
    files = write_planted(tmp_path_factory.mktemp("raw"), seed=0, spec=spec)
    truth = json.loads(files[2].read_text(encoding="utf-8"))
    out = tmp_path_factory.mktemp("datasets") / "content-signal-small"
    prepare(read_amazon(files[0], files[1], name="content-signal-small"), out)  # Amazon default: 5-core
    return files, truth, load_processed(out)


def _words(text: str, vocabulary: list[str]) -> set[str]:
    """The vocabulary words that occur in `text` as whole words."""
    return {w for w in vocabulary if re.search(rf"\b{w}\b", text.lower())}


def test_same_seed_same_bytes_other_seed_other_bytes(script, small, tmp_path: Path) -> None:
    files = small[0]
    assert [p.name for p in files] == ["reviews_Beauty_5.json.gz", "meta_Beauty.json.gz", "planted_truth.json"]
    assert script.main(["--preset", "content-signal", *SMALL, "--out", str(tmp_path / "again")]) == 0
    assert [p.read_bytes() for p in files] == [(tmp_path / "again" / p.name).read_bytes() for p in files]
    other = write_planted(tmp_path / "seed1", seed=1, spec=Planted(120, 100, 8))
    assert all(a.read_bytes() != b.read_bytes() for a, b in zip(files, other))
    assert gzip.decompress(files[0].read_bytes())  # a valid gzip stream, header mtime 0 (bytes equal above)
    assert files[0].read_bytes()[4:8] == b"\0\0\0\0"


def test_options_need_the_preset_and_sizes_are_checked(script, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        script.main(["--users", "50", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        script.main(["--preset", "content-signal", "--themes", "99", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())
    assert script.PRESETS["content-signal"] == Planted()


def test_counts_and_long_tail(small) -> None:
    files, truth, ds = small
    meta = ds.meta
    assert meta["kcore"] == 5 and meta["filters"]["kcore_removed_interactions"] == 0
    assert meta["filters"]["users_dropped_too_few"] == 0
    counts = meta["counts"]
    assert (counts["users"], counts["items"]) == (120, 100) == (len(truth["users"]), len(truth["items"]))
    assert counts["interactions"] == 1_062 == len(gzip.decompress(files[0].read_bytes()).splitlines())
    assert counts["items_with_text"] == 100 and counts["users_with_text"] == 0
    assert counts["reviews"] == counts["train"]  # every training interaction keeps its review
    per_item = np.bincount(ds.inter_item, minlength=100)
    per_user = np.bincount(ds.inter_user, minlength=120)
    assert per_item.min() == 5 and per_user.min() >= 5  # the 5-core survives untouched
    assert per_item.max() >= 4 * statistics.median(per_item)  # a head ...
    assert (per_item <= 7).mean() >= 0.3  # ... and a long tail


def test_item_texts_name_their_themes_and_no_other(small) -> None:
    _, truth, ds = small
    vocabulary = THEMES  # all 30 words: the 22 unused ones must not occur either
    assert len(ds.item_text) == 100
    for raw, text in zip(ds.item_raw, ds.item_text):
        themes = truth["items"][raw]
        assert 1 <= len(themes) <= 2
        assert _words(text, vocabulary) == set(themes), text
        assert set(themes) <= _words(text.split(".")[0], vocabulary)  # already in the title
    assert Counter(t for raw in ds.item_raw for t in truth["items"][raw][:1]) == Counter(
        {t: 100 // 8 + (i < 100 % 8) for i, t in enumerate(truth["themes"])})  # primary themes spread evenly


def test_interactions_concentrate_on_the_users_tastes(small) -> None:
    _, truth, ds = small
    tastes = [set(truth["users"][raw]) for raw in ds.user_raw]
    themes = [set(truth["items"][raw]) for raw in ds.item_raw]
    assert all(len(t) in (2, 3) for t in tastes)
    on_taste = np.mean([bool(tastes[u] & themes[j]) for u, j in zip(ds.inter_user, ds.inter_item)])
    by_chance = np.mean([bool(t & th) for t in tastes for th in themes])  # a random (user, item) pair
    assert on_taste > 0.7 and by_chance < 0.55, (on_taste, by_chance)
    primary = np.mean([truth["users"][ds.user_raw[u]][0] in themes[j] for u, j in zip(ds.inter_user, ds.inter_item)])
    assert primary > 0.3  # the heaviest taste (weight 0.5-0.6 of the on-taste picks) leads


def test_reviews_state_the_reviewers_tastes(small) -> None:
    _, truth, ds = small
    vocabulary = truth["themes"]
    assert len(ds.review_text) == ds.meta["counts"]["reviews"] > 0
    for u, j, text in zip(ds.review_user, ds.review_item, ds.review_text):
        tastes, themes = truth["users"][ds.user_raw[u]], truth["items"][ds.item_raw[j]]
        said = _words(text, vocabulary)
        assert set(tastes) <= said <= set(tastes) | set(themes), text  # all the tastes; else only the item's
        shared = [t for t in tastes if t in themes]
        assert (shared[0] in said) if shared else ("not for me" in text), text


def test_documented_default_counts(script, tmp_path: Path) -> None:
    files = write_planted(tmp_path, seed=0, spec=script.PRESETS["content-signal"])
    line = describe(files[0])
    assert line.startswith("600 users, 400 items, ")
    docs = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    assert line in docs, f"docs/data.md does not show the generator's summary line {line!r}"
    assert line.split(";")[0].replace("600 users, 400 items, ", "") in planted_tastes.__doc__
