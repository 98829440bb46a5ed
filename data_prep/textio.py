"""Reading raw text files: plain or gzip, UTF-8 with counted replacement, JSON or dict-literal lines.

A `LineReader` keeps the counters every reader reports (bad lines skipped, bytes replaced) and
raises `DataPrepError` naming file and line for a malformed line unless `skip_bad_lines` is set.
"""
from __future__ import annotations

import ast
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from data_prep.errors import DataPrepError


def open_binary(path: Path):
    """Open `path` for binary reading, transparently gunzipping `.gz` files."""
    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"{path}: file not found")
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

    def decode(self, raw: bytes) -> str:
        """UTF-8 decode; each invalid byte becomes U+FFFD and is counted."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
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

    def lines(self, path: Path) -> Iterator[tuple[int, str]]:
        """Yield (1-based line number, text without the newline) for each non-blank line."""
        with open_binary(path) as handle:
            for number, raw in enumerate(handle, start=1):
                text = self.decode(raw).rstrip("\r\n")
                if text.strip():
                    yield number, text

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
        for number, text in self.lines(path):
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

    def summary(self) -> dict[str, int]:
        return {"bad_lines_skipped": len(self.bad_lines), "bytes_replaced": self.bytes_replaced}


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
    return value


def require_pair(record: dict, user_key: str, item_key: str, path: Path, line: int,
                 reader: LineReader) -> tuple[str, str] | None:
    """(user id, item id) of an interaction record as strings, or None after reporting a missing one."""
    user = require_field(record, user_key, path, line, reader)
    item = require_field(record, item_key, path, line, reader) if user is not None else None
    return None if item is None else (str(user), str(item))
