"""Documents as structured segments, and the soft+hard prompt templates of the corpora and of
finetuning (docs/method.md §2, §4, §9.1).

A document is a list of segments: :class:`Text` (hard words), :class:`User`, :class:`Item` and
:class:`Items` (soft ID tokens). Documents are never parsed from raw text, so text containing the
characters ``<item_5>`` stays words. :class:`cllm4rec.tokenization.IdTokenizer` turns segments into
token ids; :func:`render` turns them into a readable string.

Spacing rule (shared by :func:`render`, encoding and decoding): segments are joined like words of a
sentence; a piece starts a new word unless it, or the end of what precedes it, is whitespace, or it
begins with closing punctuation (``,.:;!?)]}``), which attaches to the previous piece.

The hard words are module constants; :data:`TEMPLATES` shows each prompt as a display string (for
meta.json and docs) with ``{user}``, ``{item}`` and ``{items}`` placeholders; it is never parsed.
:class:`ContentKind` names the three kinds of content document, :class:`ScoringPrompt` the two
prompts a model can score the catalogue with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from .tasks import Name

CLOSING_PUNCTUATION = frozenset(",.:;!?)]}")

HAS_INTERACTED_WITH = "has interacted with"
WILL_INTERACT_WITH = "will interact with"
BIOGRAPHY_OF = "The biography of"
CONTENT_OF = "The content of"
IS = "is:"
WRITES_REVIEW_FOR = "writes the review for"
COLON = ":"
COMMA = ","

TEMPLATES: dict[str, str] = {
    "interaction": "<user_{user}> has interacted with",
    "biography": "The biography of <user_{user}> is:",
    "item_content": "The content of <item_{item}> is:",
    "review": "<user_{user}> writes the review for <item_{item}>:",
    "recommendation": "<user_{user}> has interacted with {items}, <user_{user}> will interact with",
}


class ContentKind(Name):
    """What a content document's main part is, and so its prompt: a user's biography
    (`biography_prompt`), an item's text (`item_content_prompt`) or a training review (`review_prompt`).
    Content samples and shards store the value."""

    BIOGRAPHY = "user"
    ITEM_TEXT = "item"
    REVIEW = "review"


class ScoringPrompt(Name):
    """The prompt a model scores the whole catalogue from (evaluation, serving): the finetuning prompt
    (`recommendation_prompt`) or the collaborative documents' prompt (`interaction_prompt`, LLM-PreRec)."""

    RECOMMENDATION = "rec"
    INTERACTION = "interaction"


@dataclass(frozen=True)
class Text:
    """Hard words (prompt text or content text); tokenised by the backbone, never scanned for IDs."""

    text: str


@dataclass(frozen=True)
class User:
    """The soft token ``<user_i>`` of user ``index``."""

    index: int


@dataclass(frozen=True)
class Item:
    """The soft token ``<item_j>`` of item ``index``."""

    index: int


@dataclass(frozen=True)
class Items:
    """A run of item tokens ``<item_a> <item_b> ...``; ``indices`` is a list or a 1-D integer array."""

    indices: Sequence[int] | np.ndarray


Segment = Union[Text, User, Item, Items]


def starts_new_word(left: str, right: str) -> bool:
    """Whether ``right`` begins a new word after the rendered text ``left`` (see the spacing rule)."""
    return (
        bool(left and right)
        and not left[-1].isspace()
        and not right[0].isspace()
        and right[0] not in CLOSING_PUNCTUATION
    )


def join_pieces(pieces: Sequence[str]) -> str:
    """Join rendered pieces (words, ``<user_i>``, ``<item_j>``) with the spacing rule."""
    out = ""
    for piece in pieces:
        out += (" " if starts_new_word(out, piece) else "") + piece
    return out


def render(segments: Sequence[Segment]) -> str:
    """Readable form of a segment list, e.g. ``"<user_3> has interacted with <item_1> <item_2>"``."""
    pieces: list[str] = []
    for seg in segments:
        if isinstance(seg, Text):
            pieces.append(seg.text)
        elif isinstance(seg, User):
            pieces.append(f"<user_{seg.index}>")
        elif isinstance(seg, Item):
            pieces.append(f"<item_{seg.index}>")
        elif isinstance(seg, Items):
            pieces.extend(f"<item_{int(j)}>" for j in np.asarray(seg.indices).reshape(-1))
        else:
            raise TypeError(f"unknown segment type {type(seg).__name__}")
    return join_pieces(pieces)


def cap_items(items: Sequence[int], max_items: int, rng: np.random.Generator | None = None) -> list[int]:
    """Keep at most ``max_items`` items, in their original order.

    With ``rng`` a random subset is kept (deterministic per seed); without, the last ``max_items``
    (for chronological lists: the oldest items are dropped).
    """
    if max_items < 0:
        raise ValueError(f"max_items must be >= 0, got {max_items}")
    items = list(items)
    if len(items) <= max_items:
        return items
    if rng is None:
        return items[len(items) - max_items :]
    keep = np.sort(rng.choice(len(items), size=max_items, replace=False))
    return [items[k] for k in keep]


def interaction_prompt(user: int) -> list[Segment]:
    """``<user_i> has interacted with`` (collaborative LLM; main part: the user's training items)."""
    return [User(user), Text(HAS_INTERACTED_WITH)]


def biography_prompt(user: int) -> list[Segment]:
    """``The biography of <user_i> is:`` (content LLM; main part: biography words)."""
    return [Text(BIOGRAPHY_OF), User(user), Text(IS)]


def item_content_prompt(item: int) -> list[Segment]:
    """``The content of <item_j> is:`` (content LLM; main part: content words)."""
    return [Text(CONTENT_OF), Item(item), Text(IS)]


def review_prompt(user: int, item: int) -> list[Segment]:
    """``<user_i> writes the review for <item_j>:`` (content LLM; main part: review words)."""
    return [User(user), Text(WRITES_REVIEW_FOR), Item(item), Text(COLON)]


def recommendation_prompt(user: int, items: Sequence[int] | np.ndarray) -> list[Segment]:
    """``<user_i> has interacted with <item_a> <item_b> ..., <user_i> will interact with`` (finetuning).

    ``items`` are the (masked, shuffled, capped) training items; the closing hard prompt is always kept.
    """
    return [User(user), Text(HAS_INTERACTED_WITH), Items(items), Text(COMMA), User(user), Text(WILL_INTERACT_WITH)]
