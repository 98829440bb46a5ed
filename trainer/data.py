"""Corpora and batches for the three LLM tasks, built from a processed dataset at read time.

Documents are rebuilt every epoch from raw indices and text (reordering and masking are random per
epoch); every epoch's randomness comes from a generator seeded by (run seed, phase, epoch), so a
resumed run sees exactly the documents an uninterrupted one would.

Under several ranks every rank draws the same global batches and keeps its share of each (rows
rank, rank+R, ...), so no document is seen twice in an epoch; each document's own randomness
(reordering, caps, masks) is seeded by (epoch, user), so a document is the same whichever rank
builds it — R ranks see exactly the documents of one rank. A rank whose share of a global batch is
empty gets a padding batch with weight 0 (ZeRO-3 steps are collective: every rank must step).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from cllm4rec.interactions import UserItems
from cllm4rec.prompts import masked_prompt, order_items
from cllm4rec.templates import (
    Items,
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
    """A generator for one (phase, epoch): seeded from the run seed and the tags, nothing else."""
    digest = hashlib.sha256(repr((seed, *tags)).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def user_item_lists(dataset: ProcessedDataset, split: str) -> UserItems:
    """Each user's items of `split`; rows keep the dataset's (chronological) order."""
    indptr, indices = dataset.split_csr(split)
    return UserItems(indptr, indices, dataset.n_items)


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
    """

    tokenizer: IdTokenizer
    train: UserItems
    content: list[Document]
    content_owner: list[tuple[str, int]]  # ("user", i) / ("item", j) for bios and item texts, ("review", -1)
    max_items: int

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
    ) -> "Corpora":
        docs: list[tuple[list, list]] = []
        owner: list[tuple[str, int]] = []
        if biographies:
            bios = [(u, t) for u, t in enumerate(dataset.user_text) if t]
            docs += [(biography_prompt(u), [Text(t)]) for u, t in bios]
            owner += [("user", u) for u, _ in bios]
        if item_texts:
            texts = [(j, t) for j, t in enumerate(dataset.item_text) if t]
            docs += [(item_content_prompt(j), [Text(t)]) for j, t in texts]
            owner += [("item", j) for j, _ in texts]
        if reviews:
            rows = [(int(u), int(j), t) for u, j, t in zip(dataset.review_user, dataset.review_item, dataset.review_text) if t]
            docs += [(review_prompt(u, j), [Text(t)]) for u, j, t in rows]
            owner += [("review", -1)] * len(rows)
        content = []
        for start in range(0, len(docs), 1024):
            content += tokenizer.encode_documents(docs[start : start + 1024], max_main_tokens=max_main_tokens)
        return cls(tokenizer, user_item_lists(dataset, "train"), content, owner, max_items)

    def entity_text_ids(self) -> dict[tuple[str, int], list[int]]:
        """Word ids of each user biography and item text, keyed ("user", i) / ("item", j)."""
        return {key: doc.main_ids for key, doc in zip(self.content_owner, self.content) if key[0] != "review"}

    # ---- per-epoch batch streams -----------------------------------------------------------------

    def collab_users(self) -> np.ndarray:
        """Users with at least one training item (the collaborative corpus: one document each)."""
        return np.flatnonzero(self.train.lengths() > 0)

    def collab_batches(self, rng: np.random.Generator, batch_size: int, reorder: bool,
                       dist: Dist = LOCAL) -> Iterator[Batch]:
        """`<user_i> has interacted with <item>...` documents; items shuffled anew unless not `reorder`."""
        users = self.collab_users()
        lengths = np.minimum(self.train.lengths()[users], self.max_items)
        epoch_seed = int(rng.integers(2**62))
        for rows in bucket_batches(lengths, batch_size, rng):
            mine, weight = own_share(rows, dist)
            docs = []
            for u in users[mine]:
                doc_rng = document_rng(epoch_seed, int(u))
                items = cap_items(order_items(self.train.row(u), doc_rng, reorder), self.max_items, doc_rng)
                docs.append((interaction_prompt(int(u)), [Items(items)]))
            yield {**pad_documents(self.tokenizer.encode_documents(docs)), "weight": torch.tensor(weight)}

    def content_batches(self, rng: np.random.Generator, batch_size: int, dist: Dist = LOCAL) -> Iterator[Batch]:
        lengths = np.array([len(d.ids) for d in self.content])
        for rows in bucket_batches(lengths, batch_size, rng):
            mine, weight = own_share(rows, dist)
            yield {**pad_documents([self.content[i] for i in mine]), "weight": torch.tensor(weight)}

    def finetune_batches(
        self, rng: np.random.Generator, batch_size: int, *, mode: str, ratio: float, target: str, dist: Dist = LOCAL
    ) -> Iterator[Batch]:
        """Masked recommendation prompts with their multi-hot targets as COO (target_rows, target_items).

        Users whose mask leaves no target are skipped; a share left empty becomes a weight-0 batch.
        """
        users = self.collab_users()
        lengths = np.minimum(self.train.lengths()[users], self.max_items)
        epoch_seed = int(rng.integers(2**62))
        for rows in bucket_batches(lengths, batch_size, rng):
            mine, weight = own_share(rows, dist)
            examples = [
                (int(u), masked_prompt(self.train.row(u), document_rng(epoch_seed, int(u)), mode=mode, ratio=ratio,
                                       target=target, max_items=self.max_items))
                for u in users[mine]
            ]
            kept = [(u, ex) for u, ex in examples if ex.target_items.shape[0] > 0]
            if not kept:
                kept, weight = examples[:1], 0.0
            ids = self.tokenizer.encode_segments([recommendation_prompt(u, ex.prompt_items) for u, ex in kept])
            batch = pad_documents([Document(x, len(x)) for x in ids])
            batch["target_rows"] = torch.tensor(
                np.repeat(np.arange(len(kept)), [ex.target_items.shape[0] for _, ex in kept]), dtype=torch.long
            )
            batch["target_items"] = torch.tensor(np.concatenate([ex.target_items for _, ex in kept]), dtype=torch.long)
            batch["weight"] = torch.tensor(weight)
            yield batch

    def scoring_batch(self, users: np.ndarray, prompt: str, seed: int) -> Batch:
        """Prompts of ALL training items (no masking) for whole-catalogue scoring, deterministic.

        prompt "rec": the finetuning prompt (SPEC 7); "interaction": `<user_i> has interacted with
        <items>` (LLM-PreRec). Over-long item lists drop random items, seeded per user.
        """
        segments = []
        for u in users:
            items = cap_items(self.train.row(int(u)), self.max_items, epoch_rng(seed, "score", int(u)))
            if prompt == "rec":
                segments.append(recommendation_prompt(int(u), items))
            else:
                segments.append(interaction_prompt(int(u)) + [Items(items)])
        ids = self.tokenizer.encode_segments(segments)
        return pad_documents([Document(x, len(x)) for x in ids])
