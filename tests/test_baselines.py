"""MostPop by hand; Multi-VAE and EASE on a tiny synthetic dataset with planted cluster structure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cllm4rec.baselines import (
    MultiVAE,
    MultiVAEHistory,
    fit_ease,
    item_popularity,
    kl_beta,
    score,
    score_ease,
    score_mostpop,
    select_ease,
    train_multivae,
)
from cllm4rec.interactions import UserItems
from cllm4rec.metrics import evaluate_scores
from trainer.baselines import run_baselines
from trainer.config import BaselineConfig, EvalConfig

N_USERS, N_ITEMS, N_CLUSTERS = 200, 60, 3


@pytest.fixture(scope="module")
def split() -> tuple[UserItems, UserItems, UserItems]:
    """Each user samples 20 items, 90% from its own block of 20; split 80/10/10 per user."""
    rng = np.random.default_rng(123)
    per_cluster = N_ITEMS // N_CLUSTERS
    parts: list[list[np.ndarray]] = [[], [], []]
    for u in range(N_USERS):
        own = np.arange(per_cluster) + (u % N_CLUSTERS) * per_cluster
        others = np.setdiff1d(np.arange(N_ITEMS), own)
        n_own = rng.binomial(20, 0.9)
        picked = [
            rng.choice(own, n_own, replace=False),
            rng.choice(others, 20 - n_own, replace=False),
        ]
        items = rng.permutation(np.concatenate(picked))
        n_held = max(1, round(0.1 * items.size))
        parts[0].append(items[2 * n_held :])
        parts[1].append(items[:n_held])
        parts[2].append(items[n_held : 2 * n_held])
    return tuple(UserItems.from_lists(p, N_ITEMS) for p in parts)  # type: ignore[return-value]


def test_mostpop_by_hand() -> None:
    # item counts 3, 3, 1, 1, 1: one ranking 0 1 2 3 4 for everyone (0 before 1 by index), minus own items
    train = UserItems.from_lists([[0, 1], [0, 2], [0, 1, 3], [4], [1]], 5)
    test = UserItems.from_lists([[2], [1], [4], [3], []], 5)  # user 4 has nothing held out
    assert item_popularity(train).tolist() == [3.0, 3.0, 1.0, 1.0, 1.0]
    assert score_mostpop(item_popularity(train), np.array([3, 0])).shape == (2, 5)
    # rankings: u0 2 3 4 (hit 1), u1 1 3 4 (hit 1), u2 2 4 (hit 2), u3 0 1 2 3 (hit 4)
    expected = {"recall@1": (1 + 1 + 0 + 0) / 4, "recall@2": (1 + 1 + 1 + 0) / 4,
                "ndcg@2": (1 + 1 + 1 / math.log2(3) + 0) / 4,
                "ndcg@4": (1 + 1 + 1 / math.log2(3) + 1 / math.log2(5)) / 4, "n_users_evaluated": 4}
    popularity = item_popularity(train)
    metrics = evaluate_scores(lambda rows: score_mostpop(popularity, rows), train, test, (1, 2), (2, 4))
    assert metrics == pytest.approx(expected, abs=1e-12)
    # the results-table row: only MostPop when the trained baselines are off
    rows = run_baselines(train, test, test, BaselineConfig(multivae=False, ease=False),
                         EvalConfig(recall_ks=[1, 2], ndcg_ks=[2, 4]), seed=0, progress=False)
    assert list(rows) == ["MostPop"]
    assert {k: v for k, v in rows["MostPop"].items() if k != "seconds"} == pytest.approx(expected, abs=1e-12)


def _random_recall(train: UserItems, test: UserItems) -> float:
    generator = torch.Generator().manual_seed(0)
    return evaluate_scores(
        lambda rows: torch.rand(len(rows), N_ITEMS, generator=generator), train, test
    )["recall@20"]


def test_ease_beats_random_and_has_zero_diagonal(split: tuple[UserItems, ...]) -> None:
    train, val, test = split
    weights = fit_ease(train, 50.0)
    assert weights.shape == (N_ITEMS, N_ITEMS)
    assert torch.count_nonzero(weights.diagonal()) == 0
    selection = select_ease(train, val, l2_grid=(1, 10, 100))
    assert selection.l2 in (1.0, 10.0, 100.0)
    assert set(selection.val_metrics) == {1.0, 10.0, 100.0}
    assert torch.count_nonzero(selection.weights.diagonal()) == 0
    test_metrics = evaluate_scores(
        lambda rows: score_ease(selection.weights, train, rows), train, test
    )
    baseline = _random_recall(train, test)
    assert test_metrics["recall@20"] > baseline + 0.2, (test_metrics, baseline)


def test_kl_beta_reaches_and_stays_at_cap() -> None:
    betas = [kl_beta(step, total_anneal_steps=10, anneal_cap=0.2) for step in range(40)]
    assert betas[0] == 0.0
    assert betas[1] == pytest.approx(0.1)
    assert all(b2 >= b1 for b1, b2 in zip(betas, betas[1:]))
    assert betas[2:] == [0.2] * 38
    assert kl_beta(5, total_anneal_steps=0) == 0.2


def _train(
    train: UserItems, val: UserItems, seed: int = 0
) -> tuple[MultiVAE, MultiVAEHistory]:
    return train_multivae(
        train,
        val,
        epochs=15,
        seed=seed,
        patience=None,
        progress=False,
        batch_size=25,
        total_anneal_steps=50,
        hidden=64,
        latent=16,
    )


def test_multivae_beats_random_and_is_deterministic(split: tuple[UserItems, ...]) -> None:
    train, val, test = split
    model, history = _train(train, val)
    assert len(history.records) == 15
    assert history.records[-1]["beta"] == pytest.approx(0.2)  # 8 updates/epoch, cap after 10
    assert history.records[-1]["loss"] < history.records[0]["loss"]
    assert history.best_val == max(r["val_ndcg@100"] for r in history.records)
    test_metrics = evaluate_scores(lambda rows: score(model, train, rows), train, test)
    baseline = _random_recall(train, test)
    assert test_metrics["recall@20"] > baseline + 0.2, (test_metrics, baseline)

    model_again, history_again = _train(train, val)
    assert history_again.records == history.records
    again = evaluate_scores(lambda rows: score(model_again, train, rows), train, test)
    assert again == test_metrics
    for p, q in zip(model.parameters(), model_again.parameters()):
        assert torch.equal(p, q)


def test_multivae_early_stopping_keeps_best_epoch(split: tuple[UserItems, ...]) -> None:
    train, val, _ = split
    model, history = train_multivae(
        train,
        val,
        epochs=50,
        seed=1,
        patience=2,
        progress=False,
        batch_size=50,
        total_anneal_steps=10,
        hidden=32,
        latent=8,
        lr=5e-2,
    )
    last = history.records[-1]["epoch"]
    assert last - history.best_epoch == 2 or last == 49
    val_now = evaluate_scores(
        lambda rows: score(model, train, rows), train, val, ks_recall=(), ks_ndcg=(100,)
    )["ndcg@100"]
    assert val_now == pytest.approx(history.best_val)
