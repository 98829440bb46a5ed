"""Amazon Reviews 5-core reader: 2014 and 2018 review dumps plus optional item metadata.

Reviews are JSON lines (plain or .gz). Metadata lines are JSON or, as in the 2014 dumps, Python
dict literals, parsed with `ast.literal_eval` (never `eval`).
"""
from __future__ import annotations

import html
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from data_prep.raw import RawBuilder, RawDataset, join_text
from data_prep.textio import LineReader, require_field, require_pair

_HTML_TAG = re.compile(r"<[^>]+>")
_SENTENCE_END = (".", "!", "?", ":", ";", "…")


def read_amazon(
    reviews_path: Path,
    meta_path: Path | None = None,
    *,
    name: str = "amazon",
    skip_bad_lines: bool = False,
) -> RawDataset:
    """Read an Amazon reviews file (and optionally its metadata file) into a `RawDataset`.

    Interaction time is in unix seconds (UTC); review text is "Summary. Review text"; item text is
    built from title, brand, categories and description. Metadata for unreviewed items is ignored.
    """
    reader = LineReader(skip_bad_lines=skip_bad_lines)
    builder = RawBuilder(name, "amazon")
    items = _read_reviews(Path(reviews_path), reader, builder)
    if meta_path is not None:
        _read_metadata(Path(meta_path), reader, builder, items)
    builder.stats.update(reader.summary())
    return builder.build()


def _read_reviews(path: Path, reader: LineReader, builder: RawBuilder) -> set[str]:
    """Add one interaction per review line; return the set of reviewed item ids."""
    items: set[str] = set()
    for line, record in reader.records(path):
        pair = require_pair(record, "reviewerID", "asin", path, line, reader)
        if pair is None:
            continue
        review = review_text(record.get("summary"), record.get("reviewText"))
        builder.add_interaction(*pair, review_time(record), review)
        items.add(pair[1])
    return items


def _read_metadata(path: Path, reader: LineReader, builder: RawBuilder, items: set[str]) -> None:
    """Set the item text of every reviewed item that has a metadata line."""
    for line, record in reader.records(path, allow_python_literals=True):
        item = require_field(record, "asin", path, line, reader)
        if item is None or str(item) not in items:
            continue
        builder.set_item_text(str(item), item_text(record))


def review_time(record: dict[str, Any]) -> int | None:
    """Unix seconds from `unixReviewTime`, else from `reviewTime` ("MM DD, YYYY", UTC), else None."""
    unix = record.get("unixReviewTime")
    if isinstance(unix, (int, float)) and not isinstance(unix, bool):
        return int(unix)
    if isinstance(unix, str) and unix.strip().isdigit():
        return int(unix.strip())
    date = record.get("reviewTime")
    if isinstance(date, str):
        try:
            parsed = datetime.strptime(date.strip(), "%m %d, %Y")
        except ValueError:
            return None
        return int(parsed.replace(tzinfo=timezone.utc).timestamp())
    return None


def review_text(summary: Any, text: Any) -> str:
    """Combine summary and review body as "Summary. Body"; either may be missing."""
    return join_text([_sentence(_as_text(summary)), _as_text(text)])


def item_text(record: dict[str, Any]) -> str:
    """A readable item description: "Title. Brand: B. Categories: a, b. Description"."""
    brand = _as_text(record.get("brand"))
    categories = ", ".join(_categories(record))
    return join_text(
        [
            _sentence(_as_text(record.get("title"))),
            _sentence(f"Brand: {brand}") if brand else "",
            _sentence(f"Categories: {categories}") if categories else "",
            _description(record.get("description")),
        ]
    )


def _categories(record: dict[str, Any]) -> list[str]:
    """Flattened, deduplicated category names in first-seen order (2014 `categories`, 2018 `category`)."""
    raw = record.get("categories") or record.get("category") or []
    flat: list[Any] = []
    for entry in raw if isinstance(raw, list) else [raw]:
        flat.extend(entry if isinstance(entry, list) else [entry])
    names = (" ".join(_strip_html(str(name)).split()) for name in flat if name is not None)
    return list(dict.fromkeys(name for name in names if name))


def _description(value: Any) -> str:
    """Description text (a string or a list of strings) with HTML tags removed."""
    parts = value if isinstance(value, list) else [value]
    return join_text([_strip_html(_as_text(part)) for part in parts])


def _strip_html(text: str) -> str:
    """Drop HTML tags and unescape entities (a light clean-up, not a full HTML parser)."""
    return html.unescape(_HTML_TAG.sub(" ", text))


def _as_text(value: Any) -> str:
    """A whitespace-normalised string; '' for None or a non-string."""
    return " ".join(value.split()) if isinstance(value, str) else ""


def _sentence(text: str) -> str:
    """`text` ending with punctuation (a period is added when needed); '' stays ''."""
    if not text:
        return ""
    return text if text.endswith(_SENTENCE_END) else text + "."
