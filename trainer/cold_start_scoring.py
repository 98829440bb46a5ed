"""Scoring for the cold-start evaluation (`trainer/cold_start.py`): the targets, one scorer per table row,
and the metrics of the two rankings.

A scorer maps user indices [B] to a new float tensor of scores [B, J] over the grown catalogue: the
model's J0 items, then the folded-in held-out items J0..J-1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from cllm4rec.baselines.content import mean_word_vectors, profile_scores, random_scores, tfidf_vectors
from cllm4rec.interactions import UserItems
from cllm4rec.metrics import evaluate_scores
from data_prep.cold_start import HeldOutItems
from data_prep.processed import ProcessedDataset
from trainer.build import RunParts
from trainer.config import TrainConfig
from trainer.engine import PlainEngine
from trainer.evaluate import limit_users, scoring_prompt
from trainer.serving import last_hidden_and_logits

Scorer = Callable[[np.ndarray], torch.Tensor]

RANDOM, TFIDF, WORDS = "Random", "TF-IDF of history texts", "Mean word embedding of history texts"
RANDOM_COLLAB, FOLD_IN = "CLLM4Rec fold-in, random collaborative rows", "CLLM4Rec fold-in"
ROW_KEYS = {RANDOM: "random", TFIDF: "tfidf", WORDS: "word_embedding", RANDOM_COLLAB: "fold_in_random_collab",
            FOLD_IN: "fold_in"}
"""The table's rows, in order, and their keys in MLflow."""
SETTINGS = {"held-out": "the held-out items only", "catalogue": "the whole catalogue, held-out items included"}
"""The two rankings: column prefix -> what is ranked."""


def heldout_targets(dataset: ProcessedDataset, held: HeldOutItems) -> tuple[UserItems, int]:
    """(targets [U, J]: each of the model's users' interactions with the held-out items, over the grown
    catalogue `dataset`; the number of users with held-out interactions whom the model does not have)."""
    users = {raw: u for u, raw in enumerate(dataset.user_raw)}
    items = {raw: j for j, raw in enumerate(dataset.item_raw)}
    known = [(users[u], items[j]) for u, j in zip(held.users, held.items) if u in users]
    pairs = np.array(known, dtype=np.int64).reshape(-1, 2)
    targets = UserItems.from_pairs(pairs[:, 0], pairs[:, 1], dataset.n_users, dataset.n_items)
    return targets, len(set(held.users) - set(users))


@torch.no_grad()
def user_states(engine: PlainEngine, parts: RunParts, users: np.ndarray, *, prompt: str, seed: int, batch_size: int,
                progress: bool) -> torch.Tensor:
    """float32 [len(users), K]: each user's last hidden state under the scoring prompt (their training
    items), from which the item logits are states @ collab_item.T (`last_hidden_and_logits`)."""
    states = []
    for start in tqdm(range(0, len(users), batch_size), desc="cold-start: user states", disable=not progress,
                      leave=False):
        batch = parts.corpora.scoring_batch(users[start : start + batch_size], prompt, seed)
        states.append(last_hidden_and_logits(engine, batch)[0].cpu())
    return torch.cat(states) if states else torch.zeros(0, parts.model.dim)


def model_scorers(states: torch.Tensor, users: np.ndarray, collab_item: torch.Tensor, n_old: int,
                  random_std: float, seed: int) -> dict[str, Scorer]:
    """The folded model (item logits from `states` [len(users), K] and its collab_item [J, K]), and the same
    with the new items' collaborative rows drawn from N(0, random_std²) instead of set to their content rows."""
    position = np.full(int(users.max(initial=-1)) + 1, -1, np.int64)
    position[users] = np.arange(len(users))
    folded = collab_item.detach().float().cpu()
    generator = torch.Generator().manual_seed(seed)
    random_rows = torch.randn(folded.shape[0] - n_old, folded.shape[1], generator=generator) * random_std

    def scorer(table: torch.Tensor) -> Scorer:
        return lambda rows: states[torch.from_numpy(position[rows])] @ table.T

    return {RANDOM_COLLAB: scorer(torch.cat([folded[:n_old], random_rows])), FOLD_IN: scorer(folded)}


def baseline_scorers(parts: RunParts, history: UserItems, seed: int) -> dict[str, Scorer]:
    """Random, and the history-text profiles by TF-IDF and by the backbone's mean input word embedding
    (`cllm4rec/baselines/content.py`) over the grown catalogue's item texts."""
    texts = parts.dataset.item_text
    tfidf = tfidf_vectors(texts)
    token_ids = parts.tokenizer.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    words = mean_word_vectors(token_ids, parts.model.backbone.get_input_embeddings())
    return {RANDOM: lambda rows: random_scores(rows, history.n_items, seed),
            TFIDF: lambda rows: profile_scores(tfidf, history, rows),
            WORDS: lambda rows: profile_scores(words, history, rows)}


def cold_start_metrics(score: Scorer, train: UserItems, targets: UserItems, n_old: int, k: int,
                       batch_size: int) -> dict[str, float]:
    """Recall@k and NDCG@k of both rankings (SETTINGS), averaged over the users with targets: "held-out
    recall@k", ..., "catalogue ndcg@k". Training items are excluded from both; the held-out ranking also
    leaves out every old item (score -inf: not a candidate)."""
    def heldout_only(rows: np.ndarray) -> torch.Tensor:
        scores = score(rows)
        scores[:, :n_old] = float("-inf")
        return scores

    metrics = {}
    for setting, scorer in (("held-out", heldout_only), ("catalogue", score)):
        result = evaluate_scores(scorer, train, targets, (k,), (k,), batch_size)
        metrics |= {f"{setting} {name}": value for name, value in result.items() if name != "n_users_evaluated"}
    return metrics


@dataclass
class ScoredRows:
    """rows: table row -> `cold_start_metrics`, in table order; users: how many were scored; targets: their
    interactions with held-out items; users_not_in_model: users with held-out interactions the model lacks."""

    rows: dict[str, dict[str, float]]
    users: int
    targets: int
    users_not_in_model: int


def score_rows(config: TrainConfig, parts: RunParts, engine: PlainEngine, held: HeldOutItems, *, k: int, seed: int,
               max_users: int | None, progress: bool) -> ScoredRows:
    """Every row's metrics for the folded model (`config`, `parts`, `engine`: its last len(held.texts) items
    are the held-out ones) over its users with held-out interactions (index < max_users, when given)."""
    n_old = parts.dataset.n_items - len(held.texts)
    targets, missing = heldout_targets(parts.dataset, held)
    targets = limit_users(targets, max_users)
    users = np.flatnonzero(targets.lengths() > 0)
    train = parts.corpora.train
    states = user_states(engine, parts, users, prompt=scoring_prompt(config), seed=config.seed,
                         batch_size=config.eval.batch_size, progress=progress)
    random_std = config.model.init_std or float(parts.model.backbone.get_input_embeddings().weight.float().std())
    scorers = {**baseline_scorers(parts, train, seed),
               **model_scorers(states, users, parts.model.collab_item, n_old, random_std, seed)}
    rows = {name: cold_start_metrics(score, train, targets, n_old, k, config.eval.batch_size)
            for name, score in tqdm(scorers.items(), desc="cold-start: rows", disable=not progress, leave=False)}
    return ScoredRows(rows, int(users.shape[0]), targets.nnz, missing)
