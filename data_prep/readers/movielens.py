"""MovieLens in RecBole atomic-file format (`.inter`, `.item`, `.user`; tab-separated, `name:type` headers).

Every rating is an interaction. Item text: "Title (year). Genres: a, b." User biography: one
sentence from age, gender and occupation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from data_prep.errors import DataPrepError
from data_prep.raw import RawBuilder, RawDataset, join_text
from data_prep.textio import LineReader, damaged_id

_GENDER = {"M": "man", "F": "woman"}
_OCCUPATION_PHRASE = {
    "none": "has no occupation",
    "other": "works in an unlisted occupation",
    "retired": "is retired",
    "student": "is a student",
    "homemaker": "is a homemaker",
    "entertainment": "works in entertainment",
    "healthcare": "works in healthcare",
    "marketing": "works in marketing",
}


def read_atomic(path: Path, reader: LineReader, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, {field name: value}) for each row of a RecBole atomic file.

    The header's `name:type` columns are reduced to their names; `required` names must be present
    (they are the IDs, so a value with invalid UTF-8 is a bad line).
    """
    lines = reader.lines(path)
    try:
        _, header = next(lines)
    except StopIteration:
        raise DataPrepError(f"{path}: empty file (expected a header line of name:type columns)") from None
    names = [column.split(":", 1)[0] for column in header.split("\t")]
    missing = [name for name in required if name not in names]
    if missing:
        raise DataPrepError(f"{path}: line 1: missing column(s) {missing}; header has {names}")
    for number, text in lines:
        values = text.split("\t")
        if len(values) != len(names):
            reader.bad_line(path, number, f"expected {len(names)} tab-separated fields, got {len(values)}")
            continue
        row = dict(zip(names, values))
        damaged = [name for name in required if reader.damaged(row[name])]
        if damaged:
            reader.bad_line(path, number, damaged_id(f"field '{damaged[0]}'"))
            continue
        yield number, row


def user_biography(age: str, gender: str, occupation: str) -> str:
    """One sentence such as 'A 24-year-old man who works as a technician.'"""
    who = _GENDER.get(gender.strip().upper(), "person")
    occupation = occupation.strip().lower()
    if occupation in _OCCUPATION_PHRASE:
        doing = _OCCUPATION_PHRASE[occupation]
    elif occupation:
        article = "an" if occupation[0] in "aeiou" else "a"
        doing = f"works as {article} {occupation}"
    else:
        doing = ""
    age_part = f"{age.strip()}-year-old " if age.strip().isdigit() else ""
    article = "An" if age_part[:1] == "8" or age_part.startswith(("11", "18")) else "A"
    sentence = f"{article} {age_part}{who}" + (f" who {doing}" if doing else "")
    return sentence + "."


def item_text(title: str, year: str, genres: str) -> str:
    """'Toy Story (1995). Genres: Animation, Children's, Comedy.'"""
    head = join_text([title]) + (f" ({year.strip()})" if year.strip() else "")
    genre_list = genres.split()
    return join_text([head + ".", f"Genres: {', '.join(genre_list)}." if genre_list else ""])


def read_movielens(folder: Path, name: str | None = None, *, skip_bad_lines: bool = False) -> RawDataset:
    """Read `<name>.inter` (required), `<name>.item` and `<name>.user` (optional) from `folder`."""
    folder = Path(folder)
    name = name or folder.name
    reader = LineReader(skip_bad_lines=skip_bad_lines)
    builder = RawBuilder(name=name, source="movielens")
    builder.text_templates = {
        "user": "A {age}-year-old {man|woman} who works as a {occupation}.",
        "item": "{movie_title} ({release_year}). Genres: {class, comma-separated}.",
    }
    inter_path = folder / f"{name}.inter"
    for number, row in read_atomic(inter_path, reader, ("user_id", "item_id")):
        time = row.get("timestamp", "")
        try:
            seconds = int(float(time)) if time else None
        except ValueError:
            reader.bad_line(inter_path, number, f"field 'timestamp' is not a number: {time!r}")
            continue
        builder.add_interaction(row["user_id"], row["item_id"], seconds)
    item_path = folder / f"{name}.item"
    if item_path.exists():
        for _, row in read_atomic(item_path, reader, ("item_id",)):
            text = item_text(row.get("movie_title", ""), row.get("release_year", ""), row.get("class", ""))
            builder.set_item_text(row["item_id"], text)
    user_path = folder / f"{name}.user"
    if user_path.exists():
        for _, row in read_atomic(user_path, reader, ("user_id",)):
            bio = user_biography(row.get("age", ""), row.get("gender", ""), row.get("occupation", ""))
            builder.set_user_text(row["user_id"], bio)
    builder.stats.update(reader.summary())
    return builder.build()
