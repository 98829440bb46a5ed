"""New items, users, interactions and reviews to fold into a trained model (`cllm4rec fold-in`), read with
the tables and checks of the generic reader (`prepare generic`): CSV, TSV, JSON lines or Parquet; an id
column and text columns joined as sentences; user, item and optional time columns; user, item and review
text columns."""
from __future__ import annotations

from dataclasses import dataclass, field

from data_prep.errors import DataPrepError
from data_prep.readers.generic import interaction_rows, read_reviews, row_label, text_rows, where
from data_prep.readers.generic_spec import InteractionTableSpec, ReviewTableSpec, TextTableSpec
from data_prep.textio import LineReader


@dataclass(frozen=True)
class NewInteraction:
    """One row of the new interactions table: `row` (see `generic.where`), raw ids, unix seconds (0: unknown)."""

    row: int
    user: str
    item: str
    time: int


@dataclass
class NewEntities:
    """What a fold-in adds. items / users: raw id -> text, in file order; reviews: (raw user, raw item) of a
    new interaction -> its review text; the specs name the files and columns in errors."""

    items: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    interactions: list[NewInteraction] = field(default_factory=list)
    reviews: dict[tuple[str, str], str] = field(default_factory=dict)
    items_spec: TextTableSpec | None = None
    users_spec: TextTableSpec | None = None
    interactions_spec: InteractionTableSpec | None = None
    reviews_spec: ReviewTableSpec | None = None
    stats: dict[str, int] = field(default_factory=dict)

    def interaction_users(self) -> list[str]:
        """Users of the interactions without a row in the users table (new users without a biography), in order."""
        return list(dict.fromkeys(i.user for i in self.interactions if i.user not in self.users))


def read_new_entities(items: TextTableSpec | None = None, users: TextTableSpec | None = None,
                      interactions: InteractionTableSpec | None = None, reviews: ReviewTableSpec | None = None, *,
                      skip_bad_lines: bool = False) -> NewEntities:
    """Read the given tables; an id twice in the items or users table is an error naming both rows. Reviews
    need the interactions they review (the first non-empty review of a pair is kept)."""
    if items is None and users is None and interactions is None:
        raise DataPrepError("fold-in: nothing to add; give new items, users or interactions")
    if reviews is not None and interactions is None:
        raise DataPrepError(f"{reviews.path}: reviews need the new interactions they review; give --interactions")
    reader = LineReader(skip_bad_lines=skip_bad_lines)
    new = NewEntities(
        items=_unique_texts(items, reader) if items else {},
        users=_unique_texts(users, reader) if users else {},
        interactions=[NewInteraction(row, user, item, time or 0)
                      for row, user, item, time in interaction_rows(interactions, reader)] if interactions else [],
        reviews=read_reviews(reviews, reader) if reviews else {},
        items_spec=items, users_spec=users, interactions_spec=interactions, reviews_spec=reviews)
    new.stats = reader.summary()
    return new


def _unique_texts(spec: TextTableSpec, reader: LineReader) -> dict[str, str]:
    """Raw id -> text of a text table whose ids must be distinct."""
    texts: dict[str, str] = {}
    first: dict[str, int] = {}
    for row, entity, text in text_rows(spec, reader):
        if entity in first:
            raise DataPrepError(f"{where(spec.path, row)}: column '{spec.id}': duplicate id {entity!r} "
                                f"(first at {row_label(spec.path, first[entity])})")
        first[entity], texts[entity] = row, text
    return texts
