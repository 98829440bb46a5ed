"""Yelp Open Dataset reader: reviews, businesses, optional users, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.errors import DataPrepError
from data_prep.readers.yelp import business_text, read_yelp, user_biography

REVIEWS = [
    {"review_id": "r1", "user_id": "u1", "business_id": "b1", "stars": 5, "useful": 0,
     "text": "Best  pizza\nin town.", "date": "2018-01-02 03:04:05"},
    {"review_id": "r2", "user_id": "u2", "business_id": "b2", "stars": 2, "text": "Slow service.",
     "date": "2020-01-01 00:00:00"},
    {"review_id": "r3", "user_id": "u1", "business_id": "b2", "stars": 4, "text": "", "date": "2016-09-01"},
]
BUSINESSES = [
    {"business_id": "b1", "name": "Tony's", "city": "Phoenix", "state": "AZ", "stars": 4.5,
     "categories": "Pizza, Restaurants, Pizza", "attributes": None},
    {"business_id": "b2", "name": "Cafe Blue", "city": "Toronto", "state": "ON", "categories": None},
    {"business_id": "b3", "name": "Nobody reviewed me", "city": "X", "state": "Y", "categories": "Bars"},
]
USERS = [
    {"user_id": "u1", "name": "Alice", "review_count": 12, "yelping_since": "2015-03-04 05:06:07",
     "average_stars": 4.12, "friends": "u2"},
    {"user_id": "u2", "name": "Bob", "review_count": 1, "yelping_since": "2019-12-31 23:59:59"},
    {"user_id": "u7", "name": "Unseen", "review_count": 3},
]


def write_json_lines(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "review": write_json_lines(tmp_path / "yelp_academic_dataset_review.json", REVIEWS),
        "business": write_json_lines(tmp_path / "yelp_academic_dataset_business.json", BUSINESSES),
        "user": write_json_lines(tmp_path / "yelp_academic_dataset_user.json", USERS),
    }


def test_reviews_businesses_and_users(files: dict[str, Path]) -> None:
    data = read_yelp(files["review"], files["business"], files["user"])
    assert data.name == "yelp" and data.source == "yelp"
    assert data.user_ids == ["u1", "u2"] and data.item_ids == ["b1", "b2"]
    assert data.inter_user.tolist() == [0, 1, 0] and data.inter_item.tolist() == [0, 1, 1]
    assert data.has_time and data.inter_time.tolist() == [1514862245, 1577836800, 1472688000]
    assert data.inter_review == ["Best pizza in town.", "Slow service.", ""]
    assert data.item_text == {
        "b1": "Tony's, Phoenix, AZ. Categories: Pizza, Restaurants.",
        "b2": "Cafe Blue, Toronto, ON.",
    }
    assert data.user_text == {
        "u1": "Alice has been on Yelp since 2015, has written 12 reviews and gives 4.1 stars on average.",
        "u2": "Bob has been on Yelp since 2019 and has written 1 review.",
    }
    assert data.stats == {"bad_lines_skipped": 0, "bytes_replaced": 0}


def test_without_user_file(files: dict[str, Path]) -> None:
    data = read_yelp(files["review"], files["business"], name="yelp-small")
    assert data.name == "yelp-small"
    assert data.user_text == {} and len(data.item_text) == 2 and data.n_interactions == 3


def test_text_builders_handle_missing_parts() -> None:
    assert business_text({"name": "Solo", "categories": ["A", " B "]}) == "Solo. Categories: A, B."
    assert business_text({}) == ""
    assert user_biography({"name": "Zed"}) == ""
    assert user_biography({"review_count": 3}) == "This user has written 3 reviews."


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "review.json"
    path.write_text(json.dumps(REVIEWS[0]) + "\n\n" + '{"user_id": "u2",,}\n', encoding="utf-8")
    with pytest.raises(DataPrepError, match=r"review\.json: line 3: malformed JSON"):
        read_yelp(path)
    data = read_yelp(path, skip_bad_lines=True)
    assert data.n_interactions == 1 and data.stats["bad_lines_skipped"] == 1


def test_bad_date_is_named(tmp_path: Path) -> None:
    path = write_json_lines(tmp_path / "review.json", [dict(REVIEWS[0], date="yesterday")])
    with pytest.raises(DataPrepError, match=r"review\.json: line 1: field 'date': cannot parse 'yesterday'"):
        read_yelp(path)


def test_missing_field_is_named(tmp_path: Path, files: dict[str, Path]) -> None:
    review = {k: v for k, v in REVIEWS[0].items() if k != "business_id"}
    with pytest.raises(DataPrepError, match=r"review\.json: line 1: missing field 'business_id'"):
        read_yelp(write_json_lines(tmp_path / "review.json", [review]))
    business = write_json_lines(tmp_path / "business.json", [{"name": "No id"}])
    with pytest.raises(DataPrepError, match=r"business\.json: line 1: missing field 'business_id'"):
        read_yelp(files["review"], business)
    data = read_yelp(files["review"], business, skip_bad_lines=True)
    assert data.stats["bad_lines_skipped"] == 1 and data.item_text == {}


def test_invalid_utf8_is_replaced_and_counted(tmp_path: Path) -> None:
    line = json.dumps({"user_id": "u1", "business_id": "b1", "text": "Cr\u00e8me XX", "date": "2020-01-01"})
    path = tmp_path / "review.json"
    path.write_bytes(line.encode().replace(b"XX", b"\xc3") + b"\n")
    data = read_yelp(path)
    assert data.inter_review == ["Cr\u00e8me \ufffd"]
    assert data.stats["bytes_replaced"] == 1


def test_truncated_gz_names_the_file(tmp_path: Path) -> None:
    import gzip

    many = [{**REVIEWS[0], "review_id": f"r{n}", "user_id": f"u{n}", "text": f"visit {n} " * 40} for n in range(300)]
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in many).encode())
    path = tmp_path / "review.json.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataPrepError, match=r"review\.json\.gz: line \d+: broken gzip stream .*"
                                            r"--skip-bad-lines cannot skip a broken compressed stream"):
        read_yelp(path, skip_bad_lines=True)


def test_invalid_utf8_in_a_business_id_names_file_and_line(tmp_path: Path, files: dict[str, Path]) -> None:
    business = tmp_path / "business.json"
    business.write_bytes(files["business"].read_bytes().replace(b'"b2"', b'"b\xc32"', 1))
    with pytest.raises(DataPrepError, match=r"business\.json: line 2: field 'business_id': invalid UTF-8 in an ID"):
        read_yelp(files["review"], business)
