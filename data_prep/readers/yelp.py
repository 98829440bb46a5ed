"""Yelp Open Dataset reader: review.json, business.json and optional user.json (JSON lines).

Reviews become interactions (with their text); businesses become item texts; users, when given,
get a one-sentence biography. Businesses and users that no review mentions are ignored.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from data_prep.raw import RawBuilder, RawDataset, join_text
from data_prep.textio import LineReader, require_field, require_pair


def read_yelp(
    review_path: Path,
    business_path: Path | None = None,
    user_path: Path | None = None,
    *,
    name: str = "yelp",
    skip_bad_lines: bool = False,
) -> RawDataset:
    """Read the Yelp JSON-lines files into a `RawDataset`; review times are unix seconds (UTC)."""
    reader = LineReader(skip_bad_lines=skip_bad_lines)
    builder = RawBuilder(name, "yelp")
    users, items = _read_reviews(Path(review_path), reader, builder)
    if business_path is not None:
        _read_businesses(Path(business_path), reader, builder, items)
    if user_path is not None:
        _read_users(Path(user_path), reader, builder, users)
    builder.stats.update(reader.summary())
    return builder.build()


def _read_reviews(path: Path, reader: LineReader, builder: RawBuilder) -> tuple[set[str], set[str]]:
    """Add one interaction per review; return the user ids and business ids seen."""
    users: set[str] = set()
    items: set[str] = set()
    for line, record in reader.records(path):
        pair = require_pair(record, "user_id", "business_id", path, line, reader)
        if pair is None:
            continue
        user, item = pair
        date = record.get("date")
        time = date_to_unix(date) if date else None
        if date and time is None:
            reader.bad_line(path, line, f"field 'date': cannot parse {date!r} as 'YYYY-MM-DD HH:MM:SS'")
            continue
        text = record.get("text")
        builder.add_interaction(user, item, time, join_text([text]) if isinstance(text, str) else "")
        users.add(user)
        items.add(item)
    return users, items


def _read_businesses(path: Path, reader: LineReader, builder: RawBuilder, items: set[str]) -> None:
    """Set the item text of every reviewed business."""
    for line, record in reader.records(path):
        item = require_field(record, "business_id", path, line, reader)
        if item is not None and str(item) in items:
            builder.set_item_text(str(item), business_text(record))


def _read_users(path: Path, reader: LineReader, builder: RawBuilder, users: set[str]) -> None:
    """Set the biography of every user who wrote a review."""
    for line, record in reader.records(path):
        user = require_field(record, "user_id", path, line, reader)
        if user is not None and str(user) in users:
            builder.set_user_text(str(user), user_biography(record))


def date_to_unix(value: Any) -> int | None:
    """Unix seconds for a "YYYY-MM-DD[ HH:MM:SS]" date read as UTC; None when unparseable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


def business_text(record: dict[str, Any]) -> str:
    """"Name, City, ST. Categories: a, b." from a business record (missing parts are left out)."""
    place = join_text([_text(record.get(key)) for key in ("name", "city", "state")], ", ")
    categories = ", ".join(_categories(record.get("categories")))
    return join_text(
        [
            f"{place}." if place else "",
            f"Categories: {categories}." if categories else "",
        ]
    )


def user_biography(record: dict[str, Any]) -> str:
    """One sentence from name, yelping_since, review_count and average_stars ('' when none known)."""
    clauses: list[str] = []
    since = date_to_unix(record.get("yelping_since"))
    if since is not None:
        clauses.append(f"has been on Yelp since {datetime.fromtimestamp(since, timezone.utc).year}")
    count = record.get("review_count")
    if isinstance(count, int) and not isinstance(count, bool):
        clauses.append(f"has written {count} review{'' if count == 1 else 's'}")
    stars = record.get("average_stars")
    if isinstance(stars, (int, float)) and not isinstance(stars, bool):
        clauses.append(f"gives {float(stars):.1f} stars on average")
    if not clauses:
        return ""
    subject = _text(record.get("name")) or "This user"
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return f"{subject} {body}."


def _categories(value: Any) -> list[str]:
    """Category names from a comma-separated string (or a list), deduplicated in order."""
    parts = value if isinstance(value, list) else (value.split(",") if isinstance(value, str) else [])
    names = (_text(part) for part in parts)
    return list(dict.fromkeys(name for name in names if name))


def _text(value: Any) -> str:
    """A whitespace-normalised string; '' for None or a non-string."""
    return " ".join(value.split()) if isinstance(value, str) else ""
