"""Metrics of the evaluation protocol against hand-computed cases and a slow reference (plus UserItems)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cllm4rec.interactions import UserItems
from cllm4rec.metrics import (
    PAD,
    MetricAccumulator,
    evaluate_scores,
    ndcg_at_k,
    recall_at_k,
    selection_score,
    topk_excluding,
)

A = 1.0 / math.log2(3)  # discount of rank 2


# ---------------------------------------------------------------- UserItems


def test_user_items_from_pairs_sorts_and_deduplicates() -> None:
    ui = UserItems.from_pairs(
        np.array([2, 0, 2, 0, 2]), np.array([5, 3, 1, 3, 5]), n_users=4, n_items=6
    )
    assert ui.n_users == 4
    assert ui.lengths().tolist() == [1, 0, 2, 0]
    assert ui.row(0).tolist() == [3]
    assert ui.row(2).tolist() == [1, 5]
    assert ui == UserItems.from_lists([[3], [], [5, 1, 5], []], n_items=6)
    assert ui != UserItems.from_lists([[3], [], [5], []], n_items=6)
    assert ui.indices.dtype == np.int64 and ui.indptr.dtype == np.int64


def test_user_items_from_lists_subset_to_dense() -> None:
    ui = UserItems.from_lists([[2, 0, 2], [], [4]], n_items=5)
    assert ui.row(0).tolist() == [0, 2]
    sub = ui.subset(np.array([2, 0, 2]))
    assert [sub.row(u).tolist() for u in range(3)] == [[4], [0, 2], [4]]
    dense = ui.to_dense(np.array([0, 2]))
    assert dense.dtype == torch.float32
    assert dense.tolist() == [[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]]
    assert ui.to_dense().shape == (3, 5)
    assert ui.to_dense(dtype=torch.bool)[1].sum() == 0


def test_user_items_validation() -> None:
    with pytest.raises(ValueError, match="item indices"):
        UserItems.from_lists([[0, 5]], n_items=5)
    with pytest.raises(ValueError, match="item indices"):
        UserItems.from_pairs(np.array([0]), np.array([-1]), n_users=1, n_items=3)
    with pytest.raises(ValueError, match="user indices"):
        UserItems.from_pairs(np.array([3]), np.array([0]), n_users=3, n_items=3)
    with pytest.raises(ValueError, match="indptr"):
        UserItems(np.array([0, 2]), np.array([1]), n_items=3)
    with pytest.raises(TypeError):
        UserItems(np.array([0, 1]), np.array([0.5]), n_items=3)
    with pytest.raises(IndexError):
        UserItems.from_lists([[0]], n_items=2).to_dense(np.array([1]))


# ---------------------------------------------------------------- hand-computed cases


def _hand_case() -> tuple[UserItems, UserItems, torch.Tensor]:
    """3 users, 6 items. User 2 has no held-out items; user 1 has more held-out items than k=2."""
    train = UserItems.from_lists([[0], [4, 5], [1]], n_items=6)
    heldout = UserItems.from_lists([[1, 4], [0, 1, 2], []], n_items=6)
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # ranking 1,2,3,4,5: hits at ranks 1 and 4
            [0.1, 0.2, 0.3, 0.4, 0.9, 0.8],  # ranking 3,2,1,0: hits at ranks 2,3,4
            [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        ]
    )
    return train, heldout, scores


def test_hand_computed_topk_recall_ndcg() -> None:
    train, heldout, scores = _hand_case()
    rows = np.arange(3)
    top = topk_excluding(scores, train, rows, 3)
    assert top.tolist() == [[1, 2, 3], [3, 2, 1], [0, 2, 3]]
    target = heldout.to_dense(dtype=torch.bool)
    r2, r3 = recall_at_k(top, target, 2), recall_at_k(top, target, 3)
    # user 0: 1 hit / min(2, 2); user 1: 1 hit / min(2, 3) = 1/2 (denominator is k, not 3)
    assert r2[:2].tolist() == [1 / 2, 1 / 2]
    assert r3[:2].tolist() == pytest.approx([1 / 2, 2 / 3])
    n2, n3 = ndcg_at_k(top, target, 2), ndcg_at_k(top, target, 3)
    assert n2[:2].tolist() == pytest.approx([1 / (1 + A), A / (1 + A)])
    assert n3[:2].tolist() == pytest.approx([1 / (1 + A), (A + 1 / 2) / (1 + A + 1 / 2)])
    assert torch.isnan(r2[2]) and torch.isnan(n2[2])  # 0/0 per user; averaging leaves it out


def test_evaluate_scores_leaves_out_users_without_heldout() -> None:
    train, heldout, scores = _hand_case()
    seen: list[list[int]] = []

    def score_fn(rows: np.ndarray) -> torch.Tensor:
        seen.append(rows.tolist())
        return scores[torch.from_numpy(rows)]

    out = evaluate_scores(score_fn, train, heldout, ks_recall=(2, 3), ks_ndcg=(3,), batch_size=1)
    assert seen == [[0], [1]]
    assert out["n_users_evaluated"] == 2
    assert out["recall@2"] == pytest.approx(1 / 2)
    assert out["recall@3"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # not /3 (zeros), not NaN
    assert out["ndcg@3"] == pytest.approx((1 / (1 + A) + (A + 1 / 2) / (1 + A + 1 / 2)) / 2)
    assert list(out) == ["recall@2", "recall@3", "ndcg@3", "n_users_evaluated"]


def test_ties_break_by_lower_item_index() -> None:
    train = UserItems.from_lists([[], [2]], n_items=6)
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0, 1.0, 0.0], [1.0, 2.0, 2.0, 2.0, 1.0, 0.0]])
    rows = np.arange(2)
    assert topk_excluding(scores, train, rows, 2).tolist() == [[1, 2], [1, 3]]
    assert topk_excluding(scores, train, rows, 4).tolist() == [[1, 2, 3, 0], [1, 3, 0, 4]]
    flat = torch.zeros(1, 6)
    assert topk_excluding(flat, train, np.array([1]), 6).tolist() == [[0, 1, 3, 4, 5, PAD]]


def test_k_larger_than_candidates() -> None:
    train = UserItems.from_lists([[0, 1]], n_items=4)
    scores = torch.tensor([[4.0, 3.0, 1.0, 2.0]])
    top = topk_excluding(scores, train, np.array([0]), 10)
    assert top.tolist() == [[3, 2, PAD, PAD]]
    # item 0 is held out although excluded: a PAD slot must not count as a hit on it
    target = UserItems.from_lists([[0, 2]], n_items=4).to_dense(dtype=torch.bool)
    assert recall_at_k(top, target, 10).tolist() == [1 / 2]
    assert ndcg_at_k(top, target, 10).tolist() == pytest.approx([A / (1 + A)])
    # an item the model itself scores -inf is not a candidate either
    scores[0, 2] = float("-inf")
    assert topk_excluding(scores, train, np.array([0]), 3).tolist() == [[3, PAD, PAD]]


def test_topk_refuses_bad_input() -> None:
    train = UserItems.from_lists([[0]], n_items=3)
    with pytest.raises(ValueError, match="NaN"):
        topk_excluding(torch.tensor([[0.0, float("nan"), 1.0]]), train, np.array([0]), 2)
    with pytest.raises(ValueError, match="scores must be"):
        topk_excluding(torch.zeros(1, 4), train, np.array([0]), 2)


# ---------------------------------------------------------------- random data vs. slow reference


def _reference(
    scores: np.ndarray, train: UserItems, heldout: UserItems, ks: tuple[int, ...]
) -> dict[str, float]:
    """One user at a time, in plain Python."""
    per: dict[str, list[float]] = {f"recall@{k}": [] for k in ks} | {f"ndcg@{k}": [] for k in ks}
    for u in range(train.n_users):
        held = set(heldout.row(u).tolist())
        if not held:
            continue
        seen = set(train.row(u).tolist())
        cands = [j for j in range(train.n_items) if j not in seen and scores[u, j] != -np.inf]
        ranking = sorted(cands, key=lambda j: (-scores[u, j], j))
        for k in ks:
            hits = [1.0 if j in held else 0.0 for j in ranking[:k]]
            per[f"recall@{k}"].append(sum(hits) / min(k, len(held)))
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(held))))
            per[f"ndcg@{k}"].append(dcg / idcg)
    return {name: sum(v) / len(v) for name, v in per.items()}


def _random_case(seed: int) -> tuple[np.ndarray, UserItems, UserItems]:
    rng = np.random.default_rng(seed)
    n_users, n_items = 37, 25
    train_lists, held_lists = [], []
    for _ in range(n_users):
        items = rng.permutation(n_items)[: rng.integers(0, 20)]
        n_held = rng.integers(0, items.size + 1)
        held_lists.append(items[:n_held])
        train_lists.append(items[n_held:])
    scores = rng.integers(0, 6, size=(n_users, n_items)).astype(np.float32)  # many ties
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    return (
        scores,
        UserItems.from_lists(train_lists, n_items),
        UserItems.from_lists(held_lists, n_items),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_reference_on_random_data(seed: int) -> None:
    scores, train, heldout = _random_case(seed)
    ks = (1, 3, 10, 30)  # 30 > 25 items: K beyond the candidate count
    expected = _reference(scores, train, heldout, ks)
    table = torch.from_numpy(scores)
    out = evaluate_scores(
        lambda rows: table[torch.from_numpy(rows)], train, heldout, ks, ks, batch_size=7
    )
    assert out["n_users_evaluated"] == int((heldout.lengths() > 0).sum())
    for name, value in expected.items():
        assert out[name] == pytest.approx(value, abs=1e-12), name


def test_training_items_never_ranked() -> None:
    scores, train, _ = _random_case(3)
    scores = np.where(np.isinf(scores), 0.0, scores) + 100.0 * train.to_dense().numpy()
    rows = np.arange(train.n_users)
    top = topk_excluding(torch.from_numpy(scores), train, rows, 25)
    for u in rows:
        ranked = [j for j in top[u].tolist() if j != PAD]
        assert not set(ranked) & set(train.row(u).tolist())
        assert len(ranked) == train.n_items - train.lengths()[u]


# ---------------------------------------------------------------- accumulation


def test_accumulator_merges_through_tensor() -> None:
    first, second, whole = MetricAccumulator(), MetricAccumulator(), MetricAccumulator()
    a = {"recall@20": torch.tensor([0.5, float("nan"), 1.0], dtype=torch.float64)}
    b = {"recall@20": torch.tensor([0.0, 0.25], dtype=torch.float64)}
    first.update(a)
    second.update(b)
    whole.update(a)
    whole.update(b)
    names, t1 = first.as_tensor()
    _, t2 = second.as_tensor()
    merged = MetricAccumulator.from_tensor(names, t1 + t2)  # what an all-reduce SUM yields
    assert merged.counts == whole.counts == {"recall@20": 4}
    assert merged.result() == pytest.approx(whole.result())
    assert whole.result() == pytest.approx({"recall@20": 0.4375})


def test_selection_score() -> None:
    assert selection_score({"recall@20": 0.1, "recall@40": 0.2, "ndcg@100": 0.3}) == pytest.approx(
        0.6
    )
    with pytest.raises(KeyError):
        selection_score({"recall@20": 0.1})


def test_sort_key_changes_batching_not_results():
    rng = np.random.default_rng(5)
    train = UserItems.from_lists([rng.choice(30, size=int(rng.integers(1, 8)), replace=False) for _ in range(40)], 30)
    heldout = UserItems.from_lists([rng.choice(30, size=int(rng.integers(0, 4)), replace=False) for _ in range(40)], 30)
    scores = torch.from_numpy(rng.standard_normal((40, 30)))
    seen: list[list[int]] = []

    def score_fn(rows):
        seen.append(rows.tolist())
        return scores[torch.as_tensor(rows)]

    plain = evaluate_scores(score_fn, train, heldout, (5,), (10,), batch_size=7)
    sorted_run = evaluate_scores(score_fn, train, heldout, (5,), (10,), batch_size=7, sort_key=train.lengths())
    assert plain == pytest.approx(sorted_run)
    order = [u for batch in seen[len(seen) // 2 :] for u in batch]
    assert [train.lengths()[u] for u in order] == sorted(train.lengths()[u] for u in order)
