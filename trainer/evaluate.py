"""Whole-catalogue evaluation and top-M recommendation with a CLLM4Rec model (docs/method.md §10–§11)."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from cllm4rec.diagnostics import LogitMoments
from cllm4rec.interactions import UserItems
from cllm4rec.metrics import evaluate_rankings
from cllm4rec.templates import ScoringPrompt
from trainer.config import TrainConfig
from trainer.data import Corpora
from trainer.engine import Engine


def scoring_prompt(config: TrainConfig) -> ScoringPrompt:
    """The prompt a trained model is evaluated and served with: RECOMMENDATION (the finetuning prompt) when
    it was finetuned, else INTERACTION (LLM-PreRec ranks from the pretraining prompt)."""
    return ScoringPrompt.RECOMMENDATION if config.finetune.enabled else ScoringPrompt.INTERACTION


def limit_users(heldout: UserItems, max_users: int | None) -> UserItems:
    """The held-out sets with every user past the first `max_users` emptied (smoke runs)."""
    if max_users is None or max_users >= heldout.n_users:
        return heldout
    lists = [heldout.row(u) if u < max_users else [] for u in range(heldout.n_users)]
    return UserItems.from_lists(lists, heldout.n_items)


def evaluate(
    engine: Engine,
    corpora: Corpora,
    heldout: UserItems,
    *,
    prompt: ScoringPrompt,
    seed: int,
    batch_size: int,
    recall_ks: list[int],
    ndcg_ks: list[int],
    max_users: int | None = None,
    desc: str = "evaluate",
    progress: bool = True,
    logit_share: bool = False,
    max_history: int | None = None,
) -> dict[str, float]:
    """Recall@K / NDCG@K of ranking every item for each user with held-out items.

    prompt: RECOMMENDATION (finetuned model) or INTERACTION (LLM-PreRec); training items are excluded.
    Under several ranks each rank scores its share of the users and the sums are reduced: every
    rank returns the figures of the whole set (collective: all ranks call it together).
    logit_share: also return "logit_user_share" (`cllm4rec.diagnostics.logit_user_share` of the
    scored users' raw logits, from per-item sums reduced over the ranks).
    max_history: at most this many training items in each prompt (default `data.max_items`); the
    exclusion is still every training item (`cllm4rec diagnose --history-caps`).
    """
    heldout = limit_users(heldout, max_users)
    dist = engine.dist
    moments = LogitMoments.zeros(corpora.train.n_items, engine.device) if logit_share else None
    total = int((heldout.lengths() > 0).sum())
    deepest = max([*recall_ks, *ndcg_ks], default=1)
    with tqdm(total=-(-total // dist.world_size), desc=desc, disable=not progress, leave=False) as bar:
        def rank(rows: np.ndarray, real: bool) -> torch.Tensor:
            items, _ = engine.rank_items(corpora.scoring_batch(rows, prompt, seed, max_items=max_history), corpora.train, rows, deepest,
                                         moments, real)
            bar.update(len(rows) if real else 0)
            return items

        metrics = evaluate_rankings(rank, heldout, tuple(recall_ks), tuple(ndcg_ks), batch_size,
                                    sort_key=corpora.train.lengths(), shard=(dist.rank, dist.world_size),
                                    all_reduce=dist.all_reduce_tensor)
    if moments is not None:
        metrics["logit_user_share"] = LogitMoments.from_tensor(dist.all_reduce_tensor(moments.as_tensor())).user_share()
    return metrics


@torch.no_grad()
def recommend(
    engine: Engine, corpora: Corpora, users: np.ndarray, top_m: int, *, prompt: ScoringPrompt, seed: int,
    batch_size: int = 32, histories: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`top_m` unseen items per user: (items [U, M] int64, scores [U, M] float32), best first;
    users with fewer unseen items have trailing items PAD (-1) with score -inf.

    histories: each user's items (indices, in prompt order) for the prompt and the exclusion; default:
    the training items. Users are scored in batches of similar prompt length (little padding per forward pass);
    the rows come back in the order of `users`.
    """
    users = np.asarray(users)
    # row b of `seen`: the items of users[b], excluded from its answer; its prompt lists them in order
    if histories is None:
        seen = corpora.train.subset(users)
        prompts = [seen.row(b) for b in range(len(users))]
    else:
        seen, prompts = UserItems.from_lists(histories, corpora.train.n_items), [np.asarray(h) for h in histories]
    order = np.argsort(seen.lengths(), kind="stable")
    out_items, out_scores = [], []
    for start in range(0, len(users), batch_size):
        picked = order[start : start + batch_size]
        batch = corpora.scoring_batch(users[picked], prompt, seed, [prompts[b] for b in picked])
        items, scores = engine.rank_items(batch, seen, picked, top_m)
        out_items.append(items.cpu().numpy())
        out_scores.append(scores.cpu().numpy())
    restore = np.argsort(order)
    if not out_items:
        width = min(top_m, corpora.train.n_items)
        return np.zeros((0, width), np.int64), np.zeros((0, width), np.float32)
    return np.concatenate(out_items)[restore], np.concatenate(out_scores)[restore]
