"""ID-token tokenizer: atomic ``<user_i>`` / ``<item_j>`` tokens over any Hugging Face tokenizer.

Token-id layout (docs/method.md §2), with V the number of rows of the backbone's input embedding
(not ``len(tokenizer)``: padded vocabularies have more rows than tokens):

    word w   ->  w            (0 <= w < V, the backbone tokenizer's own ids)
    user i   ->  V + i        (0 <= i < N)
    item j   ->  V + N + j    (0 <= j < J)

ID tokens are computed arithmetically; the backbone tokenizer is never grown, so a catalogue of a
million items costs nothing. Documents are segment lists (:mod:`cllm4rec.templates`). All text
pieces of a batch go through the backbone tokenizer in ONE call with ``add_special_tokens=False``;
the backbone's BOS (if its convention adds one) is prepended once per document.

Spacing follows the rule of :mod:`cllm4rec.templates`; how a tokenizer writes a word boundary at
the start of a separately tokenised piece is probed once, at construction:
- byte-level BPE (GPT-2, LLaMA-3, SmolLM2, Qwen) marks a word start with a leading space
  (``"Ġhas"``), so a space is prepended to a piece that starts a new word;
- SentencePiece-style tokenizers (LLaMA-2 ``"▁"`` Metaspace or normaliser) begin every piece with a
  boundary marker, so nothing is added (a space would give ``"▁▁has"``), and the lone marker they put
  before attached punctuation (``"▁" ","`` after ``<item_j>``) is dropped, as inside running text.
Text pieces are otherwise used verbatim, so templates carry no trailing space before an ID token.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, Union

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .templates import CLOSING_PUNCTUATION, Item, Items, Segment, Text, User, join_pieces, starts_new_word

DEFAULT_MAX_MAIN_TOKENS = 128

Ids = Union[torch.Tensor, np.ndarray, Sequence[int], int]


class Document(NamedTuple):
    """An encoded document: ``ids`` (length L) = [BOS] + prompt + main part.

    The LM loss is taken on ``ids[n_prompt:]`` only; ``n_prompt`` counts the BOS.
    """

    ids: list[int]
    n_prompt: int

    @property
    def prompt_ids(self) -> list[int]:
        """The conditioning part, BOS included (length ``n_prompt``)."""
        return self.ids[: self.n_prompt]

    @property
    def main_ids(self) -> list[int]:
        """The part that carries the LM loss (length ``L - n_prompt``)."""
        return self.ids[self.n_prompt :]


def truncate_main(doc: Document, max_main_tokens: int = DEFAULT_MAX_MAIN_TOKENS) -> Document:
    """Cap the main part to its first ``max_main_tokens`` tokens (the prompt is never cut)."""
    if max_main_tokens < 0:
        raise ValueError(f"max_main_tokens must be >= 0, got {max_main_tokens}")
    return Document(doc.ids[: doc.n_prompt + max_main_tokens], doc.n_prompt)


def _as_index_array(ids: Ids) -> torch.Tensor | np.ndarray:
    """Tensors and arrays pass through; ints and sequences become an int64 numpy array."""
    return ids if isinstance(ids, (torch.Tensor, np.ndarray)) else np.asarray(ids, dtype=np.int64)


class IdTokenizer:
    """Backbone tokenizer plus arithmetic user/item tokens (layout in the module docstring).

    Args:
        tokenizer: any Hugging Face tokenizer of the backbone; it is never modified.
        vocab_rows: V, the number of rows of the backbone's input embedding (>= ``len(tokenizer)``).
        n_users: N. n_items: J.
        add_bos: prepend the backbone's BOS to every document; ``None`` follows the tokenizer's own
            convention (BOS if ``tokenizer("a")`` starts with ``bos_token_id``).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vocab_rows: int,
        n_users: int,
        n_items: int,
        add_bos: bool | None = None,
    ) -> None:
        if vocab_rows < len(tokenizer):
            raise ValueError(f"vocab_rows={vocab_rows} is smaller than the tokenizer's {len(tokenizer)} tokens")
        if n_users < 0 or n_items < 0:
            raise ValueError(f"n_users and n_items must be >= 0, got {n_users} and {n_items}")
        self.tokenizer = tokenizer
        self.vocab_rows = vocab_rows
        self.n_users = n_users
        self.n_items = n_items
        self.bos_id = self._resolve_bos(add_bos)
        self.word_prefix, self.stray_marker_id = self._probe_boundaries()

    @property
    def total_size(self) -> int:
        """V + N + J: the number of distinct token ids."""
        return self.vocab_rows + self.n_users + self.n_items

    def _resolve_bos(self, add_bos: bool | None) -> int | None:
        bos = self.tokenizer.bos_token_id
        if add_bos is None:
            return bos if bos is not None and self.tokenizer("a")["input_ids"][:1] == [bos] else None
        if add_bos and bos is None:
            raise ValueError("add_bos=True but the tokenizer has no BOS token")
        return bos if add_bos else None

    def _probe_boundaries(self) -> tuple[str, int | None]:
        """How separately tokenised pieces meet word boundaries (see the module docstring).

        Returns the prefix that makes a piece start a new word (``" "`` for byte-level BPE, else
        ``""``) and the id of the lone boundary marker that the tokenizer puts before a piece that
        does not start a word (SentencePiece ``"▁"`` before ``","``), or None.
        """

        def encode(text: str) -> list[int]:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

        word_prefix = "" if encode("a has")[len(encode("a")) :] == encode("has") else " "
        attached, alone = encode("a,")[len(encode("a")) :], encode(",")
        marker = alone[0] if len(alone) == len(attached) + 1 and alone[1:] == attached else None
        return word_prefix, marker

    # ---- single tokens and vectorised predicates -------------------------------------------

    def user_token(self, index: int) -> int:
        """Token id of ``<user_index>``."""
        if not 0 <= index < self.n_users:
            raise IndexError(f"user index {index} out of range [0, {self.n_users})")
        return self.vocab_rows + int(index)

    def item_token(self, index: int) -> int:
        """Token id of ``<item_index>``."""
        if not 0 <= index < self.n_items:
            raise IndexError(f"item index {index} out of range [0, {self.n_items})")
        return self.vocab_rows + self.n_users + int(index)

    def item_tokens(self, indices: Sequence[int] | np.ndarray) -> list[int]:
        """Token ids of ``<item_j>`` for each j of ``indices`` (shape (n,)), vectorised."""
        arr = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = arr[(arr < 0) | (arr >= self.n_items)]
        if bad.size:
            raise IndexError(f"item index {int(bad[0])} out of range [0, {self.n_items})")
        return (arr + (self.vocab_rows + self.n_users)).tolist()

    def is_word(self, ids: Ids) -> torch.Tensor | np.ndarray:
        """Boolean mask, same shape as ``ids``: vocabulary word ids."""
        x = _as_index_array(ids)
        return (x >= 0) & (x < self.vocab_rows)

    def is_user(self, ids: Ids) -> torch.Tensor | np.ndarray:
        """Boolean mask, same shape as ``ids``: user token ids."""
        x = _as_index_array(ids)
        return (x >= self.vocab_rows) & (x < self.vocab_rows + self.n_users)

    def is_item(self, ids: Ids) -> torch.Tensor | np.ndarray:
        """Boolean mask, same shape as ``ids``: item token ids."""
        x = _as_index_array(ids)
        return (x >= self.vocab_rows + self.n_users) & (x < self.total_size)

    def user_index(self, ids: Ids) -> torch.Tensor | np.ndarray:
        """User indices i of user token ids (same shape); raises if any id is not a user token."""
        x = _as_index_array(ids)
        if not bool(self.is_user(x).all()):
            raise ValueError("user_index got ids that are not user tokens")
        return x - self.vocab_rows

    def item_index(self, ids: Ids) -> torch.Tensor | np.ndarray:
        """Item indices j of item token ids (same shape); raises if any id is not an item token."""
        x = _as_index_array(ids)
        if not bool(self.is_item(x).all()):
            raise ValueError("item_index got ids that are not item tokens")
        return x - (self.vocab_rows + self.n_users)

    # ---- encoding ------------------------------------------------------------------------------

    def _segment_pieces(self, docs: Sequence[Sequence[Segment]]) -> list[list[list[int]]]:
        """Token ids per document per segment (no BOS); all text is tokenised in ONE batched call."""
        out: list[list[list[int]]] = []
        texts: list[str] = []
        slots: list[tuple[int, int, bool]] = []  # (document, segment, attached to the previous piece)
        for d, doc in enumerate(docs):
            pieces: list[list[int]] = []
            left = ""  # last character of the document rendered so far
            for s, seg in enumerate(doc):
                if isinstance(seg, Text):
                    pieces.append([])
                    if seg.text:
                        prefix = self.word_prefix if starts_new_word(left, seg.text) else ""
                        attached = bool(left) and not left[-1].isspace() and seg.text[0] in CLOSING_PUNCTUATION
                        texts.append(prefix + seg.text)
                        slots.append((d, s, attached))
                        left = seg.text[-1]
                    continue
                if isinstance(seg, User):
                    ids = [self.user_token(seg.index)]
                elif isinstance(seg, Item):
                    ids = [self.item_token(seg.index)]
                elif isinstance(seg, Items):
                    ids = self.item_tokens(seg.indices)
                else:
                    raise TypeError(f"unknown segment type {type(seg).__name__}")
                pieces.append(ids)
                left = ">" if ids else left
            out.append(pieces)
        if texts:
            encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            for (d, s, attached), ids in zip(slots, encoded):
                stray = attached and len(ids) > 1 and ids[0] == self.stray_marker_id
                out[d][s] = list(ids[1:] if stray else ids)
        return out

    def _bos(self) -> list[int]:
        return [] if self.bos_id is None else [self.bos_id]

    def encode_segments(self, docs: Sequence[Sequence[Segment]]) -> list[list[int]]:
        """Encode documents (each a segment list) to token ids: [BOS] + segments, one list per doc."""
        return [self._bos() + [t for piece in pieces for t in piece] for pieces in self._segment_pieces(docs)]

    def encode_documents(
        self,
        docs: Sequence[tuple[Sequence[Segment], Sequence[Segment]]],
        max_main_tokens: int | None = None,
    ) -> list[Document]:
        """Encode (prompt segments, main segments) pairs in one batch, keeping the prompt/main split.

        ``max_main_tokens`` caps each main part from the right (for text; cap item lists with
        :func:`cllm4rec.templates.cap_items` before building the segments).
        """
        flat = [list(prompt) + list(main) for prompt, main in docs]
        result = []
        for (prompt, _), pieces in zip(docs, self._segment_pieces(flat)):
            head = self._bos() + [t for piece in pieces[: len(prompt)] for t in piece]
            doc = Document(head + [t for piece in pieces[len(prompt) :] for t in piece], len(head))
            result.append(doc if max_main_tokens is None else truncate_main(doc, max_main_tokens))
        return result

    def encode_document(
        self, prompt: Sequence[Segment], main: Sequence[Segment], max_main_tokens: int | None = None
    ) -> Document:
        """Encode one document; see :meth:`encode_documents`."""
        return self.encode_documents([(prompt, main)], max_main_tokens)[0]

    # ---- decoding ------------------------------------------------------------------------------

    def decode(self, ids: Ids, skip_special_tokens: bool = True) -> str:
        """Text of token ids (shape (L,)): word runs decoded by the backbone, IDs as ``<user_i>``/``<item_j>``."""
        flat = _as_index_array(ids)
        flat = (flat.detach().cpu().numpy() if isinstance(flat, torch.Tensor) else flat).reshape(-1)
        bad = flat[(flat < 0) | (flat >= self.total_size)]
        if bad.size:
            raise IndexError(f"token id {int(bad[0])} out of range [0, {self.total_size})")
        pieces: list[str] = []
        run: list[int] = []
        for t in flat.tolist():
            if t < self.vocab_rows:
                run.append(t)
                continue
            if run:
                pieces.append(self.tokenizer.decode(run, skip_special_tokens=skip_special_tokens))
                run = []
            u = t - self.vocab_rows
            pieces.append(f"<user_{u}>" if u < self.n_users else f"<item_{u - self.n_users}>")
        if run:
            pieces.append(self.tokenizer.decode(run, skip_special_tokens=skip_special_tokens))
        return join_pieces(pieces)
