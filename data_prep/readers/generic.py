"""Generic-table reader: interactions plus optional user, item and review text tables.

Tables are CSV (.csv), TSV (.tsv), Parquet (.parquet) or JSON lines (.jsonl/.json); text formats may
be gzipped (.gz). Column names come from a `GenericSpec`, built from YAML or from CLI options. This is
the path for LinkedIn-style data (self-descriptions, job descriptions, applications).
"""
from __future__ import annotations

import csv
import math
import zlib
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from data_prep.errors import DataPrepError
from data_prep.raw import RawBuilder, RawDataset, join_text
from data_prep.readers.generic_spec import GenericSpec, InteractionTableSpec, ReviewTableSpec, TextTableSpec
from data_prep.textio import LineReader, check_file, damaged_id, open_binary

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
_SENTENCE_END = (".", "!", "?", ":", ";")


def read_generic(spec: GenericSpec, *, name: str | None = None, skip_bad_lines: bool = False) -> RawDataset:
    """Read the tables of `spec` into a `RawDataset` (times in unix seconds, UTC)."""
    reader = LineReader(skip_bad_lines=skip_bad_lines)
    builder = RawBuilder(name or spec.name, "generic")
    reviews = read_reviews(spec.reviews, reader) if spec.reviews else {}
    pairs = _read_interactions(spec.interactions, reader, builder, reviews)
    if spec.reviews:
        builder.stats["reviews_without_interaction"] = sum(pair not in pairs for pair in reviews)
    if spec.users:
        users = {user for user, _ in pairs}
        builder.stats["user_texts_without_interaction"] = _attach(spec.users, reader, users, builder.set_user_text)
    if spec.items:
        items = {item for _, item in pairs}
        builder.stats["item_texts_without_interaction"] = _attach(spec.items, reader, items, builder.set_item_text)
    builder.stats.update(reader.summary())
    return builder.build()


def _read_interactions(
    spec: InteractionTableSpec, reader: LineReader, builder: RawBuilder, reviews: dict[tuple[str, str], str]
) -> set[tuple[str, str]]:
    """Add every interaction row (with its review, if any); return the (user, item) pairs added."""
    pairs: set[tuple[str, str]] = set()
    for _, user, item, time in interaction_rows(spec, reader):
        builder.add_interaction(user, item, time, reviews.get((user, item), ""))
        pairs.add((user, item))
    return pairs


def interaction_rows(spec: InteractionTableSpec, reader: LineReader) -> Iterator[tuple[int, str, str, int | None]]:
    """(row, user id, item id, unix seconds or None without a time column) of each valid interaction row;
    bad rows are reported (or skipped) naming file, row and column. `where` formats a row."""
    table = _Table(spec.path, reader)
    columns = [spec.user, spec.item] + ([spec.time] if spec.time else [])
    for row, values in table.rows(columns):
        pair = table.id_pair(row, (spec.user, spec.item), values[0], values[1])
        time = table.time_value(row, spec.time, values[2]) if pair and spec.time else None
        if pair is None or (spec.time and time is None):
            continue
        yield row, pair[0], pair[1], time


def read_reviews(spec: ReviewTableSpec, reader: LineReader) -> dict[tuple[str, str], str]:
    """(user id, item id) -> review text; the first non-empty review of a pair is kept."""
    table = _Table(spec.path, reader)
    reviews: dict[tuple[str, str], str] = {}
    for row, (user, item, text) in table.rows([spec.user, spec.item, spec.text]):
        pair = table.id_pair(row, (spec.user, spec.item), user, item)
        review = _text(text, reader)
        if pair is not None and review:
            reviews.setdefault(pair, review)
    return reviews


def _attach(spec: TextTableSpec, reader: LineReader, known: set[str], setter: Callable[[str, str], None]) -> int:
    """Set the text of each known id; return the rows of unknown ids."""
    unknown = 0
    for _, entity, text in text_rows(spec, reader):
        if entity in known:
            setter(entity, text)
        else:
            unknown += 1
    return unknown


def text_rows(spec: TextTableSpec, reader: LineReader) -> Iterator[tuple[int, str, str]]:
    """(row, id, text: the text columns joined as sentences) of each row with a valid id; bad ids are
    reported (or skipped) naming file, row and column. `where` formats a row."""
    table = _Table(spec.path, reader)
    for row, values in table.rows([spec.id, *spec.text]):
        entity = table.id_value(row, spec.id, values[0])
        if entity is not None:
            yield row, entity, _sentences([_text(value, reader) for value in values[1:]])


def row_label(path: Path, row: int) -> str:
    """A row of a table in errors: 'line N' for JSON lines (file lines), else 'row N' (data rows, header excluded)."""
    return f"{'line' if _table_format(Path(path)) == 'jsonl' else 'row'} {row}"


def where(path: Path, row: int) -> str:
    """'<path>: line N' or '<path>: row N' (`row_label`)."""
    return f"{path}: {row_label(path, row)}"


class _Table:
    """One table file, read by rows; bad values are reported (or skipped) naming row and column."""

    def __init__(self, path: Path, reader: LineReader):
        self.path = Path(path)
        self.reader = reader
        self.format = _table_format(self.path)
        check_file(self.path)

    def rows(self, columns: list[str]) -> Iterator[tuple[int, list[Any]]]:
        """Yield (row number, values of `columns`); JSON lines are numbered by file line."""
        if self.format == "jsonl":
            yield from self._json_rows(columns)
        else:
            yield from self._arrow_rows(columns)

    def _json_rows(self, columns: list[str]) -> Iterator[tuple[int, list[Any]]]:
        for line, record in self.reader.records(self.path):
            missing = [c for c in columns if c not in record]
            if missing:
                available = ", ".join(map(str, record)) or "none"
                self.reader.bad_line(self.path, line, f"missing column '{missing[0]}' (available: {available})")
                continue
            yield line, [record[c] for c in columns]

    def _arrow_rows(self, columns: list[str]) -> Iterator[tuple[int, list[Any]]]:
        wanted = list(dict.fromkeys(columns))
        data = self._read_arrow(wanted)
        series = {c: data.column(c).to_pylist() for c in wanted}
        for index in range(data.num_rows):
            yield index + 1, [series[c][index] for c in columns]

    def _read_arrow(self, columns: list[str]) -> pa.Table:
        """Read `columns` with pyarrow (CSV cells as raw bytes, decoded later with counting)."""
        try:
            if self.format == "parquet":
                self._check_columns(columns, pq.read_schema(self.path).names)
                return pq.read_table(self.path, columns=columns)
            delimiter = "\t" if self.format == "tsv" else ","
            self._check_columns(columns, self._csv_header(delimiter))
            return pa_csv.read_csv(
                self.path,
                parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                convert_options=pa_csv.ConvertOptions(
                    include_columns=columns, column_types={c: pa.binary() for c in columns}
                ),
            )
        except (pa.ArrowException, OSError, EOFError, zlib.error) as err:  # zlib, EOF: a broken .gz
            raise DataPrepError(f"{self.path}: cannot read as {self.format}: {err}") from err

    def _csv_header(self, delimiter: str) -> list[str]:
        """Column names from the first line of a CSV/TSV file."""
        with open_binary(self.path) as handle:
            first = self.reader.decode(handle.readline()).lstrip("\ufeff")
        return next(csv.reader([first], delimiter=delimiter), [])

    def _check_columns(self, columns: list[str], available: list[str]) -> None:
        missing = [c for c in columns if c not in available]
        if missing:
            raise DataPrepError(
                f"{self.path}: missing column '{missing[0]}' (available: {', '.join(available) or 'none'})"
            )

    def bad_row(self, row: int, reason: str) -> None:
        """Raise naming file and row (or line), or count the row when skipping bad lines."""
        if self.format == "jsonl":
            self.reader.bad_line(self.path, row, reason)
        elif not self.reader.skip_bad_lines:
            raise DataPrepError(f"{where(self.path, row)}: {reason} (use --skip-bad-lines to skip and count such rows)")
        else:
            self.reader.bad_lines.append((str(self.path), row, reason))

    def id_value(self, row: int, column: str, value: Any) -> str | None:
        """The id as a string (integral floats lose their '.0'); None after reporting an empty or damaged one."""
        text = _id_text(value, self.reader)
        if not text:
            self.bad_row(row, f"column '{column}': missing value")
            return None
        if self.reader.damaged(text):
            self.bad_row(row, damaged_id(f"column '{column}'"))
            return None
        return text

    def id_pair(self, row: int, columns: tuple[str, str], user: Any, item: Any) -> tuple[str, str] | None:
        """(user id, item id), or None after reporting the first empty one."""
        user_id = self.id_value(row, columns[0], user)
        item_id = self.id_value(row, columns[1], item) if user_id is not None else None
        return (user_id, item_id) if user_id is not None and item_id is not None else None

    def time_value(self, row: int, column: str, value: Any) -> int | None:
        """Unix seconds; None after reporting a value that is neither a number nor an ISO-8601 date."""
        if isinstance(value, bytes):
            value = self.reader.decode(value)
        try:
            return to_unix_seconds(value)
        except (ValueError, TypeError, OverflowError):
            self.bad_row(row, f"column '{column}': cannot parse {value!r} as unix seconds or an ISO-8601 date")
            return None


def _table_format(path: Path) -> str:
    """'csv', 'tsv', 'parquet' or 'jsonl' from the extension (a trailing .gz is allowed for text)."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    kind = _FORMATS.get(Path(name[:-3] if gz else name).suffix)
    if kind is None or (gz and kind == "parquet"):
        raise DataPrepError(
            f"{path}: unknown table format (use .csv, .tsv, .jsonl or .json, optionally .gz, or .parquet)"
        )
    return kind


def to_unix_seconds(value: Any) -> int:
    """Unix seconds from a number, a numeric string, an ISO-8601 string or a datetime (naive = UTC)."""
    if isinstance(value, bool) or value is None:
        raise ValueError("not a time: None or a boolean")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp())
    if isinstance(value, date):
        return to_unix_seconds(datetime(value.year, value.month, value.day))
    if not isinstance(value, str):
        raise TypeError(f"not a time: {type(value).__name__}")
    text = value.strip()
    try:
        return int(float(text))
    except ValueError:
        pass
    return to_unix_seconds(datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text))


def _id_text(value: Any, reader: LineReader) -> str:
    """A raw value as id text: 5 and 5.0 give '5'; bytes are decoded with counting; None/NaN give ''."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, bytes):
        value = reader.decode(value)
    return str(value).strip()


def _text(value: Any, reader: LineReader) -> str:
    """A raw cell as text ('' for None/NaN), whitespace-normalised."""
    return join_text([_id_text(value, reader)])


def _sentences(parts: list[str]) -> str:
    """Join text columns, ending every part but the last with punctuation."""
    kept = [p for p in parts if p]
    ended = [p if p.endswith(_SENTENCE_END) else p + "." for p in kept[:-1]]
    return " ".join(ended + kept[-1:])
