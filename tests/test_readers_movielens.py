"""The MovieLens atomic-file reader."""
from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.errors import DataPrepError
from data_prep.readers.movielens import read_movielens, user_biography

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
    f"{u}\t{i}\t4\t{1000 + 10 * u + i}\n" for u in (1, 2, 10) for i in (1, 2, 3, 4)
)
ITEM = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n1\tToy Story\t1995\tAnimation Children's Comedy\n2\tCaf\xe9\t1990\tDrama\n"
USER = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n10\t18\tF\tstudent\t1\n"


def write_ml(folder: Path, inter: bytes | str = INTER, item: bytes | str = ITEM, user: bytes | str = USER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for ext, body in (("inter", inter), ("item", item), ("user", user)):
        data = body.encode("utf-8") if isinstance(body, str) else body
        (folder / f"{folder.name}.{ext}").write_bytes(data)
    return folder


def test_reads_interactions_and_texts(tmp_path):
    raw = read_movielens(write_ml(tmp_path / "ml"))
    assert raw.n_interactions == 12 and raw.has_time
    assert raw.user_ids == ["1", "2", "10"]
    assert raw.inter_time[:2].tolist() == [1011, 1012]
    assert raw.item_text["1"] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert raw.user_text["1"] == "A 24-year-old man who works as a technician."
    assert raw.user_text["2"] == "A 53-year-old woman who works in an unlisted occupation."
    assert raw.user_text["10"] == "An 18-year-old woman who is a student."


def test_biography_articles():
    assert user_biography("8", "M", "artist") == "An 8-year-old man who works as an artist."
    assert user_biography("", "X", "") == "A person."


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    item = ITEM.encode("utf-8").replace("Caf\xe9".encode("utf-8"), b"Caf\xe9")  # latin-1 byte
    raw = read_movielens(write_ml(tmp_path / "ml", item=item))
    assert raw.stats["bytes_replaced"] == 1
    assert raw.item_text["2"].startswith("Caf\ufffd (1990)")


def test_bad_lines_name_file_and_line(tmp_path):
    inter = INTER + "3\t1\t5\n"  # 3 fields instead of 4, on line 14
    folder = write_ml(tmp_path / "ml", inter=inter)
    with pytest.raises(DataPrepError, match=r"ml\.inter: line 14: expected 4 tab-separated fields"):
        read_movielens(folder)
    raw = read_movielens(folder, skip_bad_lines=True)
    assert raw.stats["bad_lines_skipped"] == 1 and raw.n_interactions == 12


def test_missing_column_is_named(tmp_path):
    folder = write_ml(tmp_path / "ml", inter="user:token\titem_id:token\n1\t2\n")
    with pytest.raises(DataPrepError, match=r"missing column\(s\) \['user_id'\]"):
        read_movielens(folder)
    with pytest.raises(DataPrepError, match="file not found"):
        read_movielens(tmp_path / "nothing")


def test_invalid_utf8_in_an_id_names_file_and_line(tmp_path):
    inter = INTER.encode("utf-8").replace(b"\n2\t1\t4", b"\n2\xff\t1\t4", 1)  # line 6: user id "2\xff"
    folder = write_ml(tmp_path / "ml", inter=inter)
    with pytest.raises(DataPrepError, match=r"ml\.inter: line 6: field 'user_id': invalid UTF-8 in an ID"):
        read_movielens(folder)
    raw = read_movielens(folder, skip_bad_lines=True)
    assert raw.stats["bad_lines_skipped"] == 1 and "2\ufffd" not in raw.user_ids
