"""Amazon Reviews reader: 2014 and 2018 dumps, gz and plain, JSON and dict-literal metadata, bad input."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from data_prep.errors import DataPrepError
from data_prep.readers.amazon import read_amazon, review_text

REVIEWS_2014 = [
    {"reviewerID": "A1", "asin": "B001", "reviewerName": "Ann", "helpful": [0, 0],
     "reviewText": "Great   stuff,\nreally.", "overall": 5.0, "summary": "Love it",
     "unixReviewTime": 1399939200, "reviewTime": "05 13, 2014"},
    {"reviewerID": "A2", "asin": "B002", "reviewText": "Dries my skin.", "overall": 2.0,
     "summary": "Meh", "unixReviewTime": 1400000000, "reviewTime": "05 13, 2014"},
    {"reviewerID": "A1", "asin": "B002", "reviewText": "Fine.", "overall": 3.0,
     "summary": "", "unixReviewTime": 1400100000},
]
META_2014 = [
    "{'asin': 'B001', 'title': 'Face Cream', 'brand': 'Acme', 'price': 9.99, "
    "'categories': [['Beauty', 'Skin Care', 'Face'], ['Beauty', 'Face']], "
    "'description': 'A <b>rich</b> cream &amp; more.'}",
    "{'asin': 'B002', 'title': 'Soap', 'description': ['Gentle soap.', '<p>Smells nice</p>'], "
    "'related': {'also_bought': ['B001']}}",
    "{'asin': 'B999', 'title': 'Never reviewed'}",
]
REVIEWS_2018 = [
    {"overall": 4.0, "verified": True, "reviewTime": "09 1, 2016", "reviewerID": "U9", "asin": "P1",
     "style": {"Size:": " Large"}, "reviewerName": "Bo", "summary": "Nice!", "vote": "2"},
    {"overall": 5.0, "verified": False, "reviewTime": "12 25, 2017", "reviewerID": "U8", "asin": "P1",
     "reviewText": "My kids love it.", "image": ["https://example.com/a.jpg"], "unixReviewTime": 1514160000},
    {"overall": 1.0, "reviewerID": "U9", "asin": "P2", "reviewText": "Broke.", "summary": "Bad"},
]
META_2018 = [
    {"asin": "P1", "title": "Puzzle", "brand": "Brandy", "category": ["Toys", "Games", "Toys"],
     "description": ["<div>Fun for <i>all</i> ages</div>", ""], "also_buy": []},
    {"asin": "P2", "title": "Kite.", "category": [], "description": "Flies high"},
]


def write_json_lines(path: Path, records: list) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_bytes("".join(line + "\n" for line in lines).encode())
    return path


def test_2014_gz_reviews_with_dict_literal_metadata(tmp_path: Path) -> None:
    reviews = write_json_lines(tmp_path / "reviews_Beauty_5.json.gz", REVIEWS_2014)
    meta = write_lines(tmp_path / "meta_Beauty.json", META_2014)
    data = read_amazon(reviews, meta, name="beauty")
    assert data.name == "beauty" and data.source == "amazon"
    assert data.user_ids == ["A1", "A2"] and data.item_ids == ["B001", "B002"]
    assert data.inter_user.tolist() == [0, 1, 0] and data.inter_item.tolist() == [0, 1, 1]
    assert data.has_time and data.inter_time.tolist() == [1399939200, 1400000000, 1400100000]
    assert data.inter_review == ["Love it. Great stuff, really.", "Meh. Dries my skin.", "Fine."]
    assert data.item_text == {
        "B001": "Face Cream. Brand: Acme. Categories: Beauty, Skin Care, Face. A rich cream & more.",
        "B002": "Soap. Gentle soap. Smells nice",
    }
    assert data.stats == {"bad_lines_skipped": 0, "bytes_replaced": 0}


def test_2018_plain_reviews_with_json_metadata(tmp_path: Path) -> None:
    reviews = write_json_lines(tmp_path / "Toys_5.json", REVIEWS_2018)
    meta = write_json_lines(tmp_path / "meta_Toys.json.gz", META_2018)
    data = read_amazon(reviews, meta)
    assert data.user_ids == ["U9", "U8"] and data.item_ids == ["P1", "P2"]
    # reviewTime "09 1, 2016" is parsed when unixReviewTime is absent; no date at all gives 0.
    assert data.inter_time.tolist() == [1472688000, 1514160000, 0]
    assert data.inter_review == ["Nice!", "My kids love it.", "Bad. Broke."]
    assert data.item_text == {
        "P1": "Puzzle. Brand: Brandy. Categories: Toys, Games. Fun for all ages",
        "P2": "Kite. Flies high",
    }


def test_reviews_without_metadata(tmp_path: Path) -> None:
    data = read_amazon(write_json_lines(tmp_path / "r.json", REVIEWS_2014[:1]))
    assert data.n_interactions == 1 and data.item_text == {}


@pytest.mark.parametrize(
    ("summary", "text", "expected"),
    [("Love it", "Great", "Love it. Great"), ("Wow?", "Yes", "Wow? Yes"), (None, "Body", "Body"),
     ("Only", None, "Only."), ("", "", "")],
)
def test_review_text_combines_summary_and_body(summary, text, expected) -> None:
    assert review_text(summary, text) == expected


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad_reviews.json",
                       [json.dumps(REVIEWS_2014[0]), '{"reviewerID": "A2", "asin": ', json.dumps(REVIEWS_2014[1])])
    with pytest.raises(DataPrepError, match=r"bad_reviews\.json: line 2: malformed JSON"):
        read_amazon(path)


def test_skip_bad_lines_counts_them(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "r.json",
                       [json.dumps(REVIEWS_2014[0]), "not json", "[1, 2]", json.dumps(REVIEWS_2014[1])])
    data = read_amazon(path, skip_bad_lines=True)
    assert data.n_interactions == 2
    assert data.stats["bad_lines_skipped"] == 2


def test_missing_field_is_named(tmp_path: Path) -> None:
    record = {k: v for k, v in REVIEWS_2014[0].items() if k != "asin"}
    path = write_json_lines(tmp_path / "r.json", [REVIEWS_2014[1], record])
    with pytest.raises(DataPrepError, match=r"r\.json: line 2: missing field 'asin'"):
        read_amazon(path)
    meta = write_lines(tmp_path / "m.json", ["{'title': 'No asin'}"])
    with pytest.raises(DataPrepError, match=r"m\.json: line 1: missing field 'asin'"):
        read_amazon(write_json_lines(tmp_path / "ok.json", REVIEWS_2014), meta)


def test_invalid_utf8_is_replaced_and_counted(tmp_path: Path) -> None:
    line = json.dumps({"reviewerID": "A1", "asin": "B001", "summary": "Caf",
                       "reviewText": "XX ok", "unixReviewTime": 5}).encode()
    path = tmp_path / "r.json"
    path.write_bytes(line.replace(b"XX", b"\xff\xfe") + b"\n")
    data = read_amazon(path)
    assert data.inter_review == ["Caf. \ufffd\ufffd ok"]
    assert data.stats["bytes_replaced"] == 2


def test_dict_literal_with_code_is_not_executed(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    meta = write_lines(tmp_path / "meta.json", [
        META_2014[0],
        f"{{'asin': 'B002', 'title': __import__('os').mkdir({str(sentinel)!r})}}",
    ])
    reviews = write_json_lines(tmp_path / "r.json", REVIEWS_2014)
    with pytest.raises(DataPrepError, match=r"meta\.json: line 2: malformed JSON"):
        read_amazon(reviews, meta)
    data = read_amazon(reviews, meta, skip_bad_lines=True)
    assert not sentinel.exists()
    assert data.stats["bad_lines_skipped"] == 1
    assert set(data.item_text) == {"B001"}


def test_truncated_or_mislabelled_gz_is_one_error_naming_the_file(tmp_path: Path) -> None:
    """A broken compressed stream cannot be skipped line by line: the error says so, even with skipping."""
    many = [{**REVIEWS_2014[0], "reviewerID": f"A{n}", "reviewText": f"review number {n} " * 20} for n in range(400)]
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in many).encode())
    truncated = tmp_path / "reviews.json.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    for skip in (False, True):
        with pytest.raises(DataPrepError, match=r"reviews\.json\.gz: line \d+: broken gzip stream .*"
                                                r"--skip-bad-lines cannot skip a broken compressed stream"):
            read_amazon(truncated, skip_bad_lines=skip)
    plain = write_json_lines(tmp_path / "plain.json", REVIEWS_2014).rename(tmp_path / "plain.json.gz")
    with pytest.raises(DataPrepError, match=r"plain\.json\.gz: not gzip-compressed, although its name ends in \.gz"):
        read_amazon(plain)


def test_empty_file_or_directory_input_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty.json").write_bytes(b"\n")
    with pytest.raises(DataPrepError, match=r"empty\.json: empty file"):
        read_amazon(tmp_path / "empty.json")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataPrepError, match=r"folder: is a directory, not a file"):
        read_amazon(tmp_path / "folder")
    with pytest.raises(DataPrepError, match=r"meta\.json: file not found"):
        read_amazon(write_json_lines(tmp_path / "r.json", REVIEWS_2014), tmp_path / "meta.json")


def test_invalid_utf8_in_an_id_names_file_and_line(tmp_path: Path) -> None:
    """Replacing the bad byte would change the ID (and could merge two users): an error, or a skipped line."""
    lines = [json.dumps(r).encode() for r in REVIEWS_2014]
    path = tmp_path / "r.json"
    path.write_bytes(b"\n".join([lines[0], lines[1].replace(b'"A2"', b'"A2\xff"'), lines[2]]) + b"\n")
    with pytest.raises(DataPrepError, match=r"r\.json: line 2: field 'reviewerID': invalid UTF-8 in an ID"):
        read_amazon(path)
    data = read_amazon(path, skip_bad_lines=True)
    assert data.user_ids == ["A1"] and data.stats["bad_lines_skipped"] == 1
