"""Generic-table reader: CSV/TSV/Parquet/JSON lines, optional text tables, YAML and CLI specs, bad input."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.errors import DataPrepError
from data_prep.readers.generic import read_generic, to_unix_seconds
from data_prep.readers.generic_spec import GenericSpec


def write(path: Path, text: str) -> Path:
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_json_lines(path: Path, records: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def test_csv_with_time_and_all_text_tables(tmp_path: Path) -> None:
    write(tmp_path / "apps.csv",
          "member,job,ts\nm1,10,1600000000\nm2,11,2021-06-15T12:00:00\nm1,11,1600000100.7\n")
    write(tmp_path / "members.csv",
          'member,headline,about\nm1,Data engineer,"Likes Spark, SQL"\nm2,,Designer\nm9,x,y\n')
    pq.write_table(pa.table({"job": pa.array([10, 11], pa.int64()), "title": ["ML engineer", "Barista"],
                             "desc": ["Train models!", None]}), tmp_path / "jobs.parquet")
    write_json_lines(tmp_path / "notes.jsonl", [
        {"member": "m1", "job": 10, "note": "Applied  early."},
        {"member": "m2", "job": 10, "note": "No matching application."},
    ])
    spec = GenericSpec.from_options(
        tmp_path / "apps.csv", "member", "job", "ts",
        users=tmp_path / "members.csv", user_text=["headline", "about"],
        items=tmp_path / "jobs.parquet", item_text="title,desc",
        reviews=tmp_path / "notes.jsonl", review_text="note", name="jobs",
    )
    data = read_generic(spec)
    assert data.name == "jobs" and data.source == "generic"
    assert data.user_ids == ["m1", "m2"] and data.item_ids == ["10", "11"]
    assert data.inter_user.tolist() == [0, 1, 0] and data.inter_item.tolist() == [0, 1, 1]
    assert data.has_time and data.inter_time.tolist() == [1600000000, 1623758400, 1600000100]
    assert data.inter_review == ["Applied early.", "", ""]
    assert data.user_text == {"m1": "Data engineer. Likes Spark, SQL", "m2": "Designer"}
    assert data.item_text == {"10": "ML engineer. Train models!", "11": "Barista"}
    assert data.stats == {"reviews_without_interaction": 1, "user_texts_without_interaction": 1,
                          "item_texts_without_interaction": 0, "bad_lines_skipped": 0, "bytes_replaced": 0}


def test_csv_without_time_or_text_tables(tmp_path: Path) -> None:
    data = read_generic(GenericSpec.from_options(write(tmp_path / "i.csv", "u,i\n1,a\n2,b\n"), "u", "i"))
    assert data.user_ids == ["1", "2"] and data.item_ids == ["a", "b"]
    assert not data.has_time and data.inter_time.tolist() == [0, 0]
    assert data.user_text == {} and data.item_text == {} and data.inter_review == ["", ""]


def test_parquet_integer_and_integral_float_ids(tmp_path: Path) -> None:
    table = pa.table({"user": pa.array([5, 6], pa.int64()), "item": pa.array([7.0, 2.5]),
                      "when": pa.array([1_000_000_000_000, 2_000_000_000_000], pa.timestamp("ms"))})
    pq.write_table(table, tmp_path / "inter.parquet")
    data = read_generic(GenericSpec.from_options(tmp_path / "inter.parquet", "user", "item", "when"))
    assert data.user_ids == ["5", "6"] and data.item_ids == ["7", "2.5"]
    assert data.inter_time.tolist() == [1_000_000_000, 2_000_000_000]


def test_gzipped_json_lines_and_tsv(tmp_path: Path) -> None:
    write_json_lines(tmp_path / "inter.jsonl.gz", [
        {"u": 1, "i": "x", "t": "2020-01-01T00:00:00Z"}, {"u": 2.0, "i": "y", "t": "2020-01-01T01:00:00+01:00"},
    ])
    write(tmp_path / "items.tsv.gz", "i\ttext\nx\tAn item, with comma\ny\tOther\n")
    data = read_generic(GenericSpec.from_options(tmp_path / "inter.jsonl.gz", "u", "i", "t",
                                                 items=tmp_path / "items.tsv.gz", item_text="text"))
    assert data.user_ids == ["1", "2"] and data.inter_time.tolist() == [1577836800, 1577836800]
    assert data.item_text == {"x": "An item, with comma", "y": "Other"}


def test_yaml_spec_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "inter.csv", "user_id,item_id\nu1,i1\n")
    write_json_lines(tmp_path / "data" / "users.json", [{"user_id": "u1", "bio": "Hello there"}])
    config = write(tmp_path / "spec.yaml", (
        "name: linkedin\n"
        "interactions: {path: data/inter.csv, user: user_id, item: item_id}\n"
        "users:\n  path: data/users.json\n  id: user_id\n  text: [bio]\n"
    ))
    spec = GenericSpec.from_yaml(config)
    assert spec.interactions.path == tmp_path / "data" / "inter.csv"
    assert spec.users is not None and spec.users.text == ("bio",) and spec.items is None
    data = read_generic(spec)
    assert data.name == "linkedin" and data.user_text == {"u1": "Hello there"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("interactions: {path: a.csv, user: u, item: i}\nitem_table: {path: b.csv}\n", "unknown key 'item_table'"),
        ("interactions: {path: a.csv, user: u, item: i, timestamp: t}\n",
         "unknown key 'timestamp' in 'interactions'"),
        ("interactions: {path: a.csv, user: u}\n", "'interactions' needs key 'item'"),
        ("users: {path: a.csv, id: u, text: t}\n", "missing key 'interactions'"),
        ("interactions: {path: a.csv, user: [u], item: i}\n", "'interactions.user' must be a column name"),
        ("interactions: [\n", "invalid YAML"),
    ],
)
def test_bad_yaml_spec_is_rejected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataPrepError, match="spec.yaml: .*" + message.replace("[", r"\[")):
        GenericSpec.from_yaml(write(tmp_path / "spec.yaml", text))


def test_missing_column_names_file_column_and_available(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "inter.csv", "user,product\n1,2\n")
    with pytest.raises(DataPrepError, match=r"inter\.csv: missing column 'item' \(available: user, product\)"):
        read_generic(GenericSpec.from_options(csv_path, "user", "item"))
    pq.write_table(pa.table({"user": [1], "product": [2]}), tmp_path / "inter.parquet")
    with pytest.raises(DataPrepError, match=r"inter\.parquet: missing column 'item' \(available: user, product\)"):
        read_generic(GenericSpec.from_options(tmp_path / "inter.parquet", "user", "item"))
    json_path = write_json_lines(tmp_path / "inter.jsonl", [{"user": 1, "item": 2}, {"user": 1, "product": 3}])
    message = r"inter\.jsonl: line 2: missing column 'item' \(available: user, product\)"
    with pytest.raises(DataPrepError, match=message):
        read_generic(GenericSpec.from_options(json_path, "user", "item"))


def test_bad_time_names_file_row_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.csv", "u,i,t\n1,a,5\n2,b,last tuesday\n3,c,7\n")
    spec = GenericSpec.from_options(path, "u", "i", "t")
    with pytest.raises(DataPrepError, match=r"inter\.csv: row 2: column 't': cannot parse 'last tuesday'"):
        read_generic(spec)
    data = read_generic(spec, skip_bad_lines=True)
    assert data.user_ids == ["1", "3"] and data.inter_time.tolist() == [5, 7]
    assert data.stats["bad_lines_skipped"] == 1


def test_empty_id_names_row_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.csv", "u,i\n1,a\n,b\n")
    with pytest.raises(DataPrepError, match=r"inter\.csv: row 2: column 'u': missing value"):
        read_generic(GenericSpec.from_options(path, "u", "i"))


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "inter.jsonl", '{"u": 1, "i": 2}\n{"u": 3, "i"\n{"u": 4, "i": 5}\n')
    spec = GenericSpec.from_options(path, "u", "i")
    with pytest.raises(DataPrepError, match=r"inter\.jsonl: line 2: malformed JSON"):
        read_generic(spec)
    data = read_generic(spec, skip_bad_lines=True)
    assert data.user_ids == ["1", "4"] and data.stats["bad_lines_skipped"] == 1


def test_invalid_utf8_in_csv_text_is_replaced_and_counted_but_refused_in_an_id(tmp_path: Path) -> None:
    (tmp_path / "inter.csv").write_bytes(b"u,i\nJose,a\nJos\xe9,a\n")
    (tmp_path / "items.csv").write_bytes(b"i,text\na,caf\xc3\xa9 \xff\xfe\n")
    spec = GenericSpec.from_options(tmp_path / "inter.csv", "u", "i", items=tmp_path / "items.csv", item_text="text")
    with pytest.raises(DataPrepError, match=r"inter\.csv: row 2: column 'u': invalid UTF-8 in an ID"):
        read_generic(spec)
    data = read_generic(spec, skip_bad_lines=True)
    assert data.user_ids == ["Jose"] and data.item_text == {"a": "caf\u00e9 \ufffd\ufffd"}
    assert data.stats["bytes_replaced"] == 3 and data.stats["bad_lines_skipped"] == 1


def test_unreadable_or_unknown_files_are_named(tmp_path: Path) -> None:
    write(tmp_path / "broken.parquet", "this is not parquet")
    with pytest.raises(DataPrepError, match=r"broken\.parquet: cannot read as parquet"):
        read_generic(GenericSpec.from_options(tmp_path / "broken.parquet", "u", "i"))
    write(tmp_path / "inter.xlsx", "")
    with pytest.raises(DataPrepError, match=r"inter\.xlsx: unknown table format"):
        read_generic(GenericSpec.from_options(tmp_path / "inter.xlsx", "u", "i"))
    with pytest.raises(DataPrepError, match=r"absent\.csv: file not found"):
        read_generic(GenericSpec.from_options(tmp_path / "absent.csv", "u", "i"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(17, 17), (17.9, 17), ("42", 42), ("2020-01-01", 1577836800), ("2020-01-01 00:00:00Z", 1577836800)],
)
def test_to_unix_seconds(value, expected: int) -> None:
    assert to_unix_seconds(value) == expected


@pytest.mark.parametrize("value", [None, True, "soon", ["2020-01-01"], float("nan")])
def test_to_unix_seconds_rejects(value) -> None:
    with pytest.raises((ValueError, TypeError)):
        to_unix_seconds(value)
