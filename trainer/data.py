"""Corpora and batches for the three LLM tasks, built from a processed dataset at read time.

Documents are rebuilt every epoch from raw indices and text (reordering and masking are random per
epoch); every epoch's randomness comes from a generator seeded by (run seed, phase, round, epoch,
task) (docs/method.md §8.4), so a resumed run sees exactly the documents an uninterrupted one would.

Under several ranks every rank draws the same global batches and keeps its share of each (rows
rank, rank+R, ...), so no document is seen twice in an epoch; each document's own randomness
(reordering, caps, masks) is seeded by (the epoch's seed, user), so a document is the same whichever rank
builds it — R ranks see exactly the documents of one rank. A rank whose share of a global batch is
empty gets a padding batch with weight 0 (ZeRO-3 steps are collective: every rank must step).
"""
from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from cllm4rec.interactions import UserItems
from cllm4rec.prompts import masked_prompt, order_items
from cllm4rec.templates import (
    ContentKind,
    Items,
    ScoringPrompt,
    Text,
    biography_prompt,
    cap_items,
    interaction_prompt,
    item_content_prompt,
    recommendation_prompt,
    review_prompt,
)
from cllm4rec.tokenization import Document, IdTokenizer
from data_prep.processed import ProcessedDataset
from trainer.distributed import LOCAL, Dist

Batch = dict[str, torch.Tensor]


def epoch_rng(seed: int, *tags: object) -> np.random.Generator:
    """A generator seeded from the run seed and the tags (an epoch's: phase, round, epoch, task), nothing else. An Enum
    tag (a phase, a task) counts as its value: "lstep" and Phase.L_STEP give the same generator."""
    tags = tuple(tag.value if isinstance(tag, Enum) else tag for tag in tags)
    digest = hashlib.sha256(repr((seed, *tags)).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def user_item_lists(dataset: ProcessedDataset, split: str) -> UserItems:
    """Each user's items of `split`; rows keep the dataset's (chronological) order."""
    indptr, indices = dataset.split_csr(split)
    return UserItems(indptr, indices, dataset.n_items)


class EpochStream(Iterator[Batch]):
    """One epoch's batches for this rank and how many there are (the same number on every rank)."""

    def __init__(self, batches: Iterator[Batch], steps: int):
        self._batches, self.steps = batches, steps

    def __next__(self) -> Batch:
        return next(self._batches)


def bucketed_stream(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, dist: Dist,
                    make: Callable[[np.ndarray, float], Batch], window: int = 50) -> EpochStream:
    """Length-bucketed global batches over documents of `lengths`; `make(this rank's rows, weight)`
    builds each batch (see `own_share`); `window`: see `bucket_batches`."""
    batches = bucket_batches(lengths, batch_size, rng, window)
    return EpochStream((make(*own_share(rows, dist)) for rows in batches), len(batches))


def content_document(sample: dict) -> tuple[list, list]:
    """(prompt segments, main segments) of a content-corpus sample (`ProcessedDataset.content_samples`)
    of any `ContentKind`."""
    kind, user, item = sample["kind"], sample["user"], sample["item"]
    prompt = {ContentKind.BIOGRAPHY: biography_prompt, ContentKind.ITEM_TEXT: item_content_prompt,
              ContentKind.REVIEW: review_prompt}[kind]
    args = {ContentKind.BIOGRAPHY: (user,), ContentKind.ITEM_TEXT: (item,), ContentKind.REVIEW: (user, item)}[kind]
    return prompt(*args), [Text(sample["text"])]


def own_share(rows: np.ndarray, dist: Dist) -> tuple[np.ndarray, float]:
    """(this rank's rows of a global batch, weight): weight 0 and the batch's first row when empty."""
    mine = rows[dist.rank :: dist.world_size]
    return (mine, 1.0) if mine.shape[0] else (rows[:1], 0.0)


def document_rng(epoch_seed: int, user: int) -> np.random.Generator:
    """The generator of one user's document in one epoch (independent of batch and rank)."""
    return np.random.default_rng([epoch_seed, user])


def pad_documents(docs: list[Document]) -> Batch:
    """Right-padded batch: input_ids / attention_mask [B, T], lengths [B], n_prompt [B]."""
    lengths = torch.tensor([len(d.ids) for d in docs], dtype=torch.long)
    ids = torch.zeros(len(docs), int(lengths.max()), dtype=torch.long)
    for row, doc in enumerate(docs):
        ids[row, : len(doc.ids)] = torch.tensor(doc.ids, dtype=torch.long)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    n_prompt = torch.tensor([d.n_prompt for d in docs], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "lengths": lengths, "n_prompt": n_prompt}


def bucket_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, window: int = 50) -> list[np.ndarray]:
    """Batches of indices with similar lengths: shuffle, sort within windows of `window` batches,
    cut into batches, shuffle the batch order. Cuts padding while keeping epochs random."""
    order = rng.permutation(lengths.shape[0])
    batches: list[np.ndarray] = []
    span = batch_size * window
    for start in range(0, order.shape[0], span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, chunk.shape[0], batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


@dataclass
class Corpora:
    """The training documents of one dataset for one tokenizer.

    train: each user's training items (chronological). content: pre-encoded content documents
    (biographies, item texts, training reviews), main parts capped at `max_main_tokens` tokens.
    shards: a WebDataset shard folder of the same dataset (`ray_jobs/shard_corpora.py`); when set,
    every epoch streams its documents from the shards instead (split by rank, shuffled per epoch),
    building each from raw indices and text exactly as the in-memory path does.
    """

    tokenizer: IdTokenizer
    train: UserItems
    content: list[Document]
    content_owner: list[tuple[ContentKind, int, int]]  # (kind, user, item) of each document; -1 where it has none
    max_items: int
    max_main_tokens: int = 128
    content_kinds: tuple[ContentKind, ...] = tuple(ContentKind)
    shards: Path | None = None
    shuffle_buffer: int = 1000
    skip_corrupt: bool = False
    skipped_shards: set[Path] = field(default_factory=set)  # corrupted shards left out so far
    bucket_window: int = 50  # batches per length-sorting window of the in-memory epochs (bucket_batches)

    @classmethod
    def build(
        cls,
        dataset: ProcessedDataset,
        tokenizer: IdTokenizer,
        *,
        max_items: int = 512,
        max_main_tokens: int = 128,
        biographies: bool = True,
        item_texts: bool = True,
        reviews: bool = True,
        shards: Path | None = None,
        dataset_path: Path | None = None,
        shuffle_buffer: int = 1000,
        skip_corrupt: bool = False,
        bucket_window: int = 50,
    ) -> "Corpora":
        """In-memory corpora; with `shards`, their manifest is checked against `dataset_path` and every
        shard's sha256 verified once here (epochs then check sizes only)."""
        wanted = {ContentKind.BIOGRAPHY: biographies, ContentKind.ITEM_TEXT: item_texts, ContentKind.REVIEW: reviews}
        kinds = tuple(k for k, on in wanted.items() if on)
        samples = [s for s in dataset.content_samples() if s["kind"] in kinds]
        docs = [content_document(s) for s in samples]
        owner = [(s["kind"], s["user"], s["item"]) for s in samples]
        content = []
        for start in range(0, len(docs), 1024):
            content += tokenizer.encode_documents(docs[start : start + 1024], max_main_tokens=max_main_tokens)
        skipped: set[Path] = set()
        if shards is not None:
            from data_prep.shards import CORPORA, check_shards, read_manifest

            manifest = read_manifest(Path(shards), dataset_path)
            for corpus in CORPORA:
                skipped.update(check_shards(Path(shards), manifest, corpus, verify=True, skip_corrupt=skip_corrupt)[1])
        return cls(tokenizer, user_item_lists(dataset, "train"), content, owner, max_items, max_main_tokens, kinds,
                   Path(shards) if shards is not None else None, shuffle_buffer, skip_corrupt, skipped, bucket_window)

    def entity_text_ids(self, reviews: bool = False) -> dict[tuple[str, int], list[int]]:
        """Word ids of each user biography and item text, keyed ("user", i) / ("item", j); with `reviews`,
        followed by those of every training review the user wrote or the item received."""
        text_ids: dict[tuple[str, int], list[int]] = defaultdict(list)
        for (kind, user, item), doc in zip(self.content_owner, self.content):
            if kind == ContentKind.REVIEW:
                if reviews:
                    text_ids["user", user] += doc.main_ids
                    text_ids["item", item] += doc.main_ids
            elif kind == ContentKind.BIOGRAPHY:
                text_ids["user", user] += doc.main_ids
            else:
                text_ids["item", item] += doc.main_ids
        return dict(text_ids)

    # ---- per-epoch batch streams -----------------------------------------------------------------

    def collab_users(self) -> np.ndarray:
        """Users with at least one training item (the collaborative corpus: one document each)."""
        return np.flatnonzero(self.train.lengths() > 0)

    def collab_batches(self, rng: np.random.Generator, batch_size: int, reorder: bool,
                       dist: Dist = LOCAL) -> EpochStream:
        """`<user_i> has interacted with <item>...` documents; items shuffled anew unless not `reorder`."""
        epoch_seed = int(rng.integers(2**62))

        def document(u: int, items: np.ndarray) -> tuple[list, list]:
            doc_rng = document_rng(epoch_seed, u)
            return interaction_prompt(u), [Items(cap_items(order_items(items, doc_rng, reorder), self.max_items, doc_rng))]

        def batch(rows: list[tuple[int, np.ndarray]], weight: float) -> Batch:
            docs = self.tokenizer.encode_documents([document(u, items) for u, items in rows])
            return {**pad_documents(docs), "weight": torch.tensor(weight)}

        return self._user_stream("collab", rng, batch_size, dist, batch)

    def content_batches(self, rng: np.random.Generator, batch_size: int, dist: Dist = LOCAL) -> EpochStream:
        if self.shards is not None:
            def batch(samples: list[dict], weight: float) -> Batch:
                docs = [content_document(s) for s in samples]
                encoded = self.tokenizer.encode_documents(docs, max_main_tokens=self.max_main_tokens)
                return {**pad_documents(encoded), "weight": torch.tensor(weight)}

            return self._shard_stream("content", rng, batch_size, dist, batch,
                                      keep=lambda s: s["kind"] in self.content_kinds)
        lengths = np.array([len(d.ids) for d in self.content])
        return bucketed_stream(lengths, batch_size, rng, dist, lambda mine, weight: {
            **pad_documents([self.content[i] for i in mine]), "weight": torch.tensor(weight)}, self.bucket_window)

    def finetune_batches(
        self, rng: np.random.Generator, batch_size: int, *, mode: str, ratio: float, target: str, dist: Dist = LOCAL
    ) -> EpochStream:
        """Masked recommendation prompts with their multi-hot targets as COO (target_rows, target_items).

        Users whose mask leaves no target are skipped; a share left empty becomes a weight-0 batch.
        """
        epoch_seed = int(rng.integers(2**62))

        def batch(rows: list[tuple[int, np.ndarray]], weight: float) -> Batch:
            examples = [(u, masked_prompt(items, document_rng(epoch_seed, u), mode=mode, ratio=ratio, target=target,
                                          max_items=self.max_items)) for u, items in rows]
            kept = [(u, ex) for u, ex in examples if ex.target_items.shape[0] > 0]
            if not kept:
                kept, weight = examples[:1], 0.0
            ids = self.tokenizer.encode_segments([recommendation_prompt(u, ex.prompt_items) for u, ex in kept])
            out = pad_documents([Document(x, len(x)) for x in ids])
            out["target_rows"] = torch.tensor(
                np.repeat(np.arange(len(kept)), [ex.target_items.shape[0] for _, ex in kept]), dtype=torch.long
            )
            out["target_items"] = torch.tensor(np.concatenate([ex.target_items for _, ex in kept]), dtype=torch.long)
            out["weight"] = torch.tensor(weight)
            return out

        return self._user_stream("finetune", rng, batch_size, dist, batch)

    # ---- epoch sources: in-memory (length-bucketed global batches) or WebDataset shards ----------

    def _user_stream(self, corpus: str, rng: np.random.Generator, batch_size: int, dist: Dist,
                     make: Callable[[list[tuple[int, np.ndarray]], float], Batch]) -> EpochStream:
        """Batches of (user, training items) rows: this rank's share of length-bucketed global
        batches, or (with shards) the rank's own shards cut into batches of batch_size / R."""
        if self.shards is not None:
            return self._shard_stream(corpus, rng, batch_size, dist,
                                      lambda samples, w: make([(s["user"], np.asarray(s["items"], np.int64)) for s in samples], w))
        users = self.collab_users()
        return bucketed_stream(np.minimum(self.train.lengths()[users], self.max_items), batch_size, rng, dist,
                               lambda mine, weight: make([(int(u), self.train.row(int(u))) for u in users[mine]], weight),
                               self.bucket_window)

    def _shard_stream(self, corpus: str, rng: np.random.Generator, batch_size: int, dist: Dist,
                      make: Callable[[list[dict], float], Batch], keep: Callable[[dict], bool] = lambda s: True) -> EpochStream:
        """This rank's shards of `corpus`, shuffled from the epoch's generator, in batches of
        ceil(batch_size / R); ranks with fewer samples pad with weight-0 batches so all take the
        same number of steps (ZeRO-3 steps are collective)."""
        from data_prep.shards import read_corpus

        source = read_corpus(self.shards, corpus, rank=dist.rank, world_size=dist.world_size, worker=0, num_workers=1,
                             shuffle_buffer=self.shuffle_buffer, seed=int(rng.integers(2**62)), epoch=0, verify=False,
                             skip_corrupt=self.skip_corrupt, exclude=frozenset(self.skipped_shards))
        micro = -(-batch_size // dist.world_size)
        steps = -(-max(source.rank_samples) // micro)

        def stream() -> Iterator[Batch]:
            samples, last = (s for s in source if keep(s)), None
            for _ in range(steps):
                chunk = list(itertools.islice(samples, micro))
                last = chunk[:1] or last
                if last is None:
                    raise RuntimeError(f"{self.shards}: rank {dist.rank} read no {corpus} sample")
                yield make(chunk, 1.0) if chunk else make(last, 0.0)
            self.skipped_shards.update(source.skipped)

        return EpochStream(stream(), steps)

    def scoring_batch(self, users: np.ndarray, prompt: ScoringPrompt, seed: int,
                      histories: list[np.ndarray] | None = None, max_items: int | None = None) -> Batch:
        """Prompts of ALL training items (no masking) for whole-catalogue scoring, deterministic.

        prompt RECOMMENDATION: the finetuning prompt; INTERACTION: `<user_i> has interacted with
        <items>` (LLM-PreRec). Over-long item lists drop random items, seeded per user. histories:
        each user's items instead of the training items (serving with extra history). max_items: keep at
        most this many of them (default and upper bound: `data.max_items`; `cllm4rec diagnose --history-caps`).
        """
        cap = self.max_items if max_items is None else min(max_items, self.max_items)
        segments = []
        for index, u in enumerate(users):
            history = self.train.row(int(u)) if histories is None else np.asarray(histories[index])
            items = cap_items(history, cap, epoch_rng(seed, "score", int(u)))
            if prompt == ScoringPrompt.RECOMMENDATION:
                segments.append(recommendation_prompt(int(u), items))
            else:
                segments.append(interaction_prompt(int(u)) + [Items(items)])
        ids = self.tokenizer.encode_segments(segments)
        return pad_documents([Document(x, len(x)) for x in ids])
