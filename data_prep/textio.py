"""Reading raw text files: plain or gzip, UTF-8 with counted replacement, JSON or dict-literal lines.

A `LineReader` keeps the counters every reader reports (bad lines skipped, bytes replaced) and
raises `DataPrepError` naming file and line for a malformed line unless `skip_bad_lines` is set.
Replaced bytes are fine in texts but not in IDs: `damaged` tells a reader that an ID would change.
"""
from __future__ import annotations

import ast
import gzip
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from data_prep.errors import DataPrepError


def check_file(path: Path) -> Path:
    """`path` if it is a file; else DataPrepError saying whether it is missing or a directory."""
    path = Path(path)
    if path.is_dir():
        raise DataPrepError(f"{path}: is a directory, not a file")
    if not path.is_file():
        raise DataPrepError(f"{path}: file not found")
    return path


def open_binary(path: Path):
    """Open `path` for binary reading, transparently gunzipping `.gz` files."""
    path = check_file(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


@dataclass
class LineReader:
    """Iterates decoded lines of raw files and counts what it had to repair or skip.

    bytes_replaced: invalid UTF-8 bytes replaced by U+FFFD (never a crash).
    bad_lines: malformed records skipped (only with `skip_bad_lines`), as (file, line, reason).
    """

    skip_bad_lines: bool = False
    bytes_replaced: int = 0
    bad_lines: list[tuple[str, int, str]] = field(default_factory=list)
    last_repaired: bool = False  # whether the last `decode` (a line or a cell) replaced bytes

    def decode(self, raw: bytes) -> str:
        """UTF-8 decode; each invalid byte becomes U+FFFD and is counted."""
        self.last_repaired = False
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.last_repaired = True
        pieces: list[str] = []
        pos = 0
        while True:
            try:
                pieces.append(raw[pos:].decode("utf-8"))
                return "".join(pieces)
            except UnicodeDecodeError as err:
                pieces.append(raw[pos : pos + err.start].decode("utf-8"))
                pieces.append("\ufffd")
                self.bytes_replaced += err.end - err.start
                pos += err.end

    def damaged(self, value: str) -> bool:
        """Whether `value`, from the line or cell decoded last, holds a replaced byte (an ID would change)."""
        return self.last_repaired and "\ufffd" in value

    def lines(self, path: Path) -> Iterator[tuple[int, str]]:
        """Yield (1-based line number, text without the newline) for each non-blank line."""
        number = 0
        with open_binary(path) as handle:
            try:
                for number, raw in enumerate(handle, start=1):
                    text = self.decode(raw).rstrip("\r\n")
                    if text.strip():
                        yield number, text
            except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # truncated, mislabelled or corrupt .gz
                raise _broken_stream(path, number + 1, err) from None

    def bad_line(self, path: Path, number: int, reason: str) -> None:
        """Record a malformed line, or raise if skipping was not asked for."""
        if not self.skip_bad_lines:
            raise DataPrepError(
                f"{path}: line {number}: {reason} (use --skip-bad-lines to skip and count such lines)"
            )
        self.bad_lines.append((str(path), number, reason))

    def records(self, path: Path, allow_python_literals: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield (line number, object) for each JSON line of `path`.

        With `allow_python_literals`, a line that is not JSON may be a Python dict literal (the 2014
        Amazon metadata dumps); it is parsed with `ast.literal_eval`, which evaluates no code.
        """
        empty = True
        for number, text in self.lines(path):
            empty = False
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                record = _python_literal(text) if allow_python_literals else None
                if record is None:
                    self.bad_line(path, number, f"malformed JSON ({err.msg} at column {err.colno})")
                    continue
            if not isinstance(record, dict):
                self.bad_line(path, number, f"expected a JSON object, got {type(record).__name__}")
                continue
            yield number, record
        if empty:
            raise DataPrepError(f"{path}: empty file (no JSON lines)")

    def summary(self) -> dict[str, int]:
        return {"bad_lines_skipped": len(self.bad_lines), "bytes_replaced": self.bytes_replaced}


def _broken_stream(path: Path, line: int, err: Exception) -> DataPrepError:
    """The one-line error for a .gz file that cannot be decompressed at `line` (`err` from gzip/zlib)."""
    if isinstance(err, gzip.BadGzipFile) and line == 1:
        what = "not gzip-compressed, although its name ends in .gz (if it is plain text, drop the .gz)"
    else:
        what = f"line {line}: broken gzip stream ({err})"
    return DataPrepError(f"{path}: {what}; --skip-bad-lines cannot skip a broken compressed stream "
                         f"(re-download or recompress the file)")


def _python_literal(text: str) -> dict | None:
    """Parse a Python dict literal safely (no code runs); None when it is not one."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def require_field(record: dict, name: str, path: Path, line: int, reader: LineReader) -> Any | None:
    """Return `record[name]`, or report the missing field (raises unless skipping bad lines)."""
    value = record.get(name)
    if value is None or value == "":
        reader.bad_line(path, line, f"missing field '{name}'")
        return None
    if reader.damaged(str(value)):
        reader.bad_line(path, line, damaged_id(f"field '{name}'"))
        return None
    return value


def damaged_id(where: str) -> str:
    """The reason given for an ID holding invalid UTF-8 (replacing the bytes would change the ID)."""
    return f"{where}: invalid UTF-8 in an ID (replacing the bytes would change it); fix the file's encoding"


def require_pair(record: dict, user_key: str, item_key: str, path: Path, line: int,
                 reader: LineReader) -> tuple[str, str] | None:
    """(user id, item id) of an interaction record as strings, or None after reporting a missing one."""
    user = require_field(record, user_key, path, line, reader)
    item = require_field(record, item_key, path, line, reader) if user is not None else None
    return None if item is None else (str(user), str(item))
