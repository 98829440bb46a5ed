"""Scoring for the cold-start evaluation (`trainer/cold_start.py`): the targets, one scorer per table row,
and the metrics of the rankings.

The model is the folded one: its last rows of the held-out kind are the held-out items (J0..J-1) or
users (N0..N-1). A scorer maps user indices [B] to a new float tensor of scores [B, J] over all items.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from cllm4rec.baselines.content import authored_vectors, mean_word_vectors, profile_scores, random_scores, tfidf_vectors
from cllm4rec.baselines.mostpop import item_popularity, score_mostpop
from cllm4rec.interactions import UserItems
from cllm4rec.metrics import evaluate_scores
from data_prep.cold_start import HeldOut
from data_prep.processed import ProcessedDataset
from trainer.build import RunParts
from trainer.config import TrainConfig
from trainer.engine import PlainEngine
from trainer.evaluate import scoring_prompt
from trainer.serving import user_states

Scorer = Callable[[np.ndarray], torch.Tensor]

RANDOM, MOSTPOP = "Random", "MostPop"
TFIDF, WORDS = "TF-IDF of history texts", "Mean word embedding of history texts"
TFIDF_REVIEWS = "TF-IDF of history texts and own reviews"
RANDOM_COLLAB, FOLD_IN = "CLLM4Rec fold-in, random collaborative rows", "CLLM4Rec fold-in"
ROW_KEYS = {RANDOM: "random", MOSTPOP: "mostpop", TFIDF: "tfidf", TFIDF_REVIEWS: "tfidf_reviews",
            WORDS: "word_embedding", RANDOM_COLLAB: "fold_in_random_collab", FOLD_IN: "fold_in"}
"""Every row, in table order, and its key in MLflow (MostPop: held-out users only, new items have no
interactions; TF-IDF with own reviews: held-out users folded in with reviews only)."""
SETTINGS = {"held-out": "the held-out items only", "catalogue": "the whole catalogue, held-out items included"}
"""The rankings: column prefix -> what is ranked; held-out users are ranked over the catalogue only."""


def settings_of(kind: str) -> tuple[str, ...]:
    """The rankings of a split of `kind` ("items": both; "users": the catalogue)."""
    return tuple(SETTINGS) if kind == "items" else ("catalogue",)


def heldout_targets(dataset: ProcessedDataset, held: HeldOut, max_users: int | None) -> tuple[UserItems, int]:
    """(targets [U, J]: the held-out interactions of the folded model's users, over its dataset, only the
    first `max_users` such users by index when given; how many users with targets the model does not have)."""
    users = {raw: u for u, raw in enumerate(dataset.user_raw)}
    items = {raw: j for j, raw in enumerate(dataset.item_raw)}
    pairs = np.array([(users[u], items[j]) for u, j in zip(held.users, held.items) if u in users and j in items],
                     dtype=np.int64).reshape(-1, 2)
    if max_users is not None:
        pairs = pairs[np.isin(pairs[:, 0], np.unique(pairs[:, 0])[:max_users])]
    targets = UserItems.from_pairs(pairs[:, 0], pairs[:, 1], dataset.n_users, dataset.n_items)
    return targets, len(set(held.users) - set(users))


def random_rows(rows: int, dim: int, std: float, seed: int) -> torch.Tensor:
    """float32 [rows, dim] drawn from N(0, std²) with `seed`: ID rows as a model initialises them."""
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)) * std


@contextmanager
def replaced_rows(table: torch.nn.Parameter, first: int, rows: torch.Tensor) -> Iterator[None]:
    """`table`'s rows first.. replaced by `rows` inside the block, restored after it."""
    kept = table.detach()[first:].clone()
    with torch.no_grad():
        table[first:] = rows.to(table.device, table.dtype)
    try:
        yield
    finally:
        with torch.no_grad():
            table[first:] = kept


def logit_scorer(states: torch.Tensor, users: np.ndarray, collab_item: torch.Tensor) -> Scorer:
    """Item logits states[b] @ collab_item.T [J, K] for user users[b]; `states` [len(users), K]."""
    position = np.full(int(users.max(initial=-1)) + 1, -1, np.int64)
    position[users] = np.arange(len(users))
    table = collab_item.detach().float().cpu().clone()  # its own copy: the rows may be replaced later
    return lambda rows: states[torch.from_numpy(position[rows])] @ table.T


def model_scorers(config: TrainConfig, parts: RunParts, engine: PlainEngine, kind: str, n_new: int, users: np.ndarray,
                  *, seed: int, progress: bool) -> dict[str, Scorer]:
    """The folded model, and the same with the held-out items' or users' collaborative rows drawn at random
    (`random_rows`, the model's init_std, else the std of the backbone's word embeddings) instead of the
    fold-in's (the MR prior's mean, docs/method.md §7; refined by their history for users)."""
    model = parts.model
    std = config.model.init_std or float(model.backbone.get_input_embeddings().weight.float().std())
    drawn = random_rows(n_new, model.dim, std, seed)
    table = model.collab_item if kind == "items" else model.collab_user

    def states() -> torch.Tensor:
        return user_states(engine, parts.corpora, users, prompt=scoring_prompt(config), seed=config.seed,
                           batch_size=config.eval.batch_size, progress=progress)

    folded_states = states()
    folded = logit_scorer(folded_states, users, model.collab_item)
    with replaced_rows(table, table.shape[0] - n_new, drawn):  # new items never enter an old user's prompt
        random = logit_scorer(states() if kind == "users" else folded_states, users, model.collab_item)
    return {RANDOM_COLLAB: random, FOLD_IN: folded}


def baseline_scorers(parts: RunParts, history: UserItems, kind: str, seed: int, n_new: int = 0) -> dict[str, Scorer]:
    """Random; MostPop for held-out users; and the history-text profiles by TF-IDF and by the backbone's
    mean input word embedding (`cllm4rec/baselines/content.py`) over the model's item texts. Where some of
    the `n_new` held-out users (the last rows) were folded in with reviews, also the TF-IDF profile of their
    history texts and their own reviews."""
    dataset = parts.dataset
    texts = dataset.item_text
    tfidf = tfidf_vectors(texts)
    token_ids = parts.tokenizer.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    words = mean_word_vectors(token_ids, parts.model.backbone.get_input_embeddings())
    popularity = item_popularity(history)
    scorers = {RANDOM: lambda rows: random_scores(rows, history.n_items, seed),
               MOSTPOP: lambda rows: score_mostpop(popularity, rows),
               TFIDF: lambda rows: profile_scores(tfidf, history, rows),
               WORDS: lambda rows: profile_scores(words, history, rows)}
    reviewed = np.flatnonzero(np.asarray(dataset.review_user) >= dataset.n_users - n_new)
    if kind == "users" and reviewed.shape[0]:
        own = tfidf_vectors(texts, [dataset.review_text[r] for r in reviewed])
        authored = authored_vectors(own, np.asarray(dataset.review_user)[reviewed], dataset.n_users)
        scorers[TFIDF_REVIEWS] = lambda rows: profile_scores(tfidf, history, rows, authored)
    return {name: scorer for name, scorer in scorers.items() if name != MOSTPOP or kind == "users"}


def cold_start_metrics(score: Scorer, train: UserItems, targets: UserItems, n_old_items: int, k: int,
                       batch_size: int, settings: tuple[str, ...] = tuple(SETTINGS)) -> dict[str, float]:
    """Recall@k and NDCG@k (docs/method.md §11.2) of each ranking of `settings` (SETTINGS), averaged over the
    users with targets: "held-out recall@k", ..., "catalogue ndcg@k". Training items are excluded; the
    held-out ranking also leaves out the items below `n_old_items` (score -inf: not a candidate)."""
    def heldout_only(rows: np.ndarray) -> torch.Tensor:
        scores = score(rows)
        scores[:, :n_old_items] = float("-inf")
        return scores

    metrics = {}
    for setting in settings:
        scorer = heldout_only if setting == "held-out" else score
        result = evaluate_scores(scorer, train, targets, (k,), (k,), batch_size)
        metrics |= {f"{setting} {name}": value for name, value in result.items() if name != "n_users_evaluated"}
    return metrics


@dataclass
class ScoredRows:
    """rows: table row -> `cold_start_metrics`, in table order; users: how many were scored; targets: their
    held-out interactions; users_not_in_model: users with held-out interactions the model lacks."""

    rows: dict[str, dict[str, float]]
    users: int
    targets: int
    users_not_in_model: int


def score_rows(config: TrainConfig, parts: RunParts, engine: PlainEngine, held: HeldOut, *, k: int, seed: int,
               max_users: int | None, progress: bool) -> ScoredRows:
    """Every row's metrics for the folded model (`config`, `parts`, `engine`) over its users with held-out
    interactions (the first `max_users` by index, when given)."""
    n_new = len(held.texts)
    targets, missing = heldout_targets(parts.dataset, held, max_users)
    users = np.flatnonzero(targets.lengths() > 0)
    train = parts.corpora.train
    scorers = {**baseline_scorers(parts, train, held.kind, seed, n_new),
               **model_scorers(config, parts, engine, held.kind, n_new, users, seed=seed, progress=progress)}
    n_old_items = parts.dataset.n_items - (n_new if held.kind == "items" else 0)
    rows = {name: cold_start_metrics(scorers[name], train, targets, n_old_items, k, config.eval.batch_size,
                                     settings_of(held.kind))
            for name in tqdm([n for n in ROW_KEYS if n in scorers], desc="cold-start: rows", disable=not progress,
                             leave=False)}
    return ScoredRows(rows, int(users.shape[0]), targets.nnz, missing)
