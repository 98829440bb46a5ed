"""The table spec of the generic reader: which files hold which columns, from YAML or CLI options."""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from data_prep.errors import DataPrepError
from data_prep.textio import open_binary


@dataclass(frozen=True)
class TableSpec:
    """One input table file."""

    path: Path


@dataclass(frozen=True)
class InteractionTableSpec(TableSpec):
    """User and item id columns, and an optional time column (unix seconds or ISO-8601 dates)."""

    user: str
    item: str
    time: str | None = None


@dataclass(frozen=True)
class TextTableSpec(TableSpec):
    """An id column and the text column(s) joined into the entity's text."""

    id: str
    text: tuple[str, ...]


@dataclass(frozen=True)
class ReviewTableSpec(TableSpec):
    """User, item and review-text columns."""

    user: str
    item: str
    text: str


_SECTIONS: dict[str, type[TableSpec]] = {
    "interactions": InteractionTableSpec,
    "users": TextTableSpec,
    "items": TextTableSpec,
    "reviews": ReviewTableSpec,
}


@dataclass(frozen=True)
class GenericSpec:
    """Which tables to read and which columns hold what."""

    interactions: InteractionTableSpec
    users: TextTableSpec | None = None
    items: TextTableSpec | None = None
    reviews: ReviewTableSpec | None = None
    name: str = "generic"

    @classmethod
    def from_yaml(cls, path: Path) -> GenericSpec:
        """Load a YAML spec; relative table paths are resolved against the YAML file's folder."""
        path = Path(path)
        try:
            with open_binary(path) as handle:
                data = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            raise DataPrepError(f"{path}: invalid YAML: {err}") from err
        return cls.from_dict(data, base=path.parent, origin=str(path))

    @classmethod
    def from_options(
        cls,
        interactions: str | Path,
        user: str,
        item: str,
        time: str | None = None,
        *,
        users: str | Path | None = None,
        user_id: str | None = None,
        user_text: str | Sequence[str] | None = None,
        items: str | Path | None = None,
        item_id: str | None = None,
        item_text: str | Sequence[str] | None = None,
        reviews: str | Path | None = None,
        review_user: str | None = None,
        review_item: str | None = None,
        review_text: str | None = None,
        name: str = "generic",
    ) -> GenericSpec:
        """Build a spec from CLI-style options; id columns default to the interaction columns' names."""
        data: dict[str, Any] = {
            "name": name,
            "interactions": {"path": interactions, "user": user, "item": item, "time": time},
        }
        if users is not None:
            data["users"] = {"path": users, "id": user_id or user, "text": user_text}
        if items is not None:
            data["items"] = {"path": items, "id": item_id or item, "text": item_text}
        if reviews is not None:
            review_columns = {"user": review_user or user, "item": review_item or item, "text": review_text}
            data["reviews"] = {"path": reviews, **review_columns}
        return cls.from_dict(data, base=None, origin="command line")

    @classmethod
    def from_dict(cls, data: Any, *, base: Path | None, origin: str) -> GenericSpec:
        """Validate a plain mapping; `origin` names it in errors, `base` resolves relative paths."""
        if not isinstance(data, Mapping):
            raise DataPrepError(f"{origin}: expected a mapping with an 'interactions' table")
        _reject_unknown(data, ["name", *_SECTIONS], origin, "the spec")
        if data.get("interactions") is None:
            raise DataPrepError(f"{origin}: missing key 'interactions'")
        tables = {
            key: _table_spec(kind, data[key], key, base, origin)
            for key, kind in _SECTIONS.items()
            if data.get(key) is not None
        }
        name = data.get("name") or "generic"
        if not isinstance(name, str):
            raise DataPrepError(f"{origin}: key 'name' must be a string")
        return cls(name=name, **tables)


def _reject_unknown(data: Mapping, allowed: Sequence[str], origin: str, where: str) -> None:
    """Raise naming the first key of `data` that is not in `allowed`."""
    for key in data:
        if key not in allowed:
            raise DataPrepError(f"{origin}: unknown key '{key}' in {where} (allowed: {', '.join(allowed)})")


def _table_spec(kind: type[TableSpec], data: Any, section: str, base: Path | None, origin: str) -> TableSpec:
    """Build one table spec from its mapping, checking keys and value types."""
    if not isinstance(data, Mapping):
        raise DataPrepError(f"{origin}: '{section}' must be a mapping of path and column names")
    specs = fields(kind)
    _reject_unknown(data, [f.name for f in specs], origin, f"'{section}'")
    values: dict[str, Any] = {}
    for spec in specs:
        value = data.get(spec.name)
        if value in (None, "", []):
            if spec.default is MISSING:
                raise DataPrepError(f"{origin}: '{section}' needs key '{spec.name}'")
            continue
        values[spec.name] = _spec_value(spec.name, value, section, base, origin)
    return kind(**values)


def _spec_value(key: str, value: Any, section: str, base: Path | None, origin: str) -> Any:
    """A table path (resolved against `base`), a tuple of text columns, or one column name."""
    if key == "path":
        if not isinstance(value, (str, Path)):
            raise DataPrepError(f"{origin}: '{section}.path' must be a file path")
        path = Path(value).expanduser()
        return base / path if base is not None and not path.is_absolute() else path
    if key == "text" and section in ("users", "items"):
        columns = value.split(",") if isinstance(value, str) else value
        if not isinstance(columns, (list, tuple)) or not all(isinstance(c, str) and c.strip() for c in columns):
            raise DataPrepError(f"{origin}: '{section}.text' must be a column name or a list of them")
        return tuple(c.strip() for c in columns)
    if not isinstance(value, str):
        raise DataPrepError(f"{origin}: '{section}.{key}' must be a column name (a string)")
    return value
