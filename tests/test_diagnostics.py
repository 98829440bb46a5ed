"""The instruments that tell whether a run learns more than popularity: the popularity entropy of the
training items and the user-specificity of hidden states and logits, against hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cllm4rec.diagnostics import (LogitMoments, hidden_user_variance, logit_user_share,
                                  mean_pairwise_cosine)
from cllm4rec.interactions import UserItems, popularity_entropy
from cllm4rec.metrics import evaluate_rankings


def test_popularity_entropy_by_hand():
    # item counts 3, 3, 1, 1, 1 of 9 pairs: H = 2·(1/3)·ln 3 + 3·(1/9)·ln 9 = (4/3)·ln 3
    train = UserItems.from_lists([[0, 1], [0, 2], [0, 1, 3], [4], [1]], 6)  # item 5 never seen
    assert train.item_counts().tolist() == [3, 3, 1, 1, 1, 0]
    assert popularity_entropy(train) == pytest.approx(4 / 3 * math.log(3), abs=1e-12)
    assert popularity_entropy(UserItems.from_lists([[0, 1, 2, 3]], 4)) == pytest.approx(math.log(4))
    assert popularity_entropy(UserItems.from_lists([[2], [2]], 3)) == 0.0  # one item: nothing to learn
    assert popularity_entropy(UserItems.from_lists([[], []], 3)) == 0.0


def test_hidden_user_variance_and_cosine_by_hand():
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    assert hidden_user_variance(same) == 0.0
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    # per-dimension variances 1/4 and 1/4, mean squared entry 1/2
    assert hidden_user_variance(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.5)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.0)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # averages to 0 over users: all of it varies
    assert hidden_user_variance(opposite) == pytest.approx(1.0)
    assert mean_pairwise_cosine(opposite) == pytest.approx(-1.0)
    # pairs (1,2): 1, (1,3) and (2,3): 0 → mean over the 3 pairs 1/3
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])) == pytest.approx(1 / 3)
    assert hidden_user_variance(torch.zeros(3, 4)) == 0.0
    with pytest.raises(ValueError, match="at least 2 rows"):
        mean_pairwise_cosine(torch.ones(1, 4))


def test_logit_user_share_by_hand():
    items = torch.tensor([0.5, -1.0, 3.0, 2.0])
    users = torch.tensor([1.0, -2.0, 0.25])
    assert logit_user_share(items.expand(3, 4)) == 0.0  # the same list for everyone
    assert logit_user_share(users[:, None].expand(3, 4)) == pytest.approx(1.0)  # a user term only
    # item means (2, 4), overall mean 3: within-item squares 4, total 8
    assert logit_user_share(torch.tensor([[1.0, 3.0], [3.0, 5.0]])) == pytest.approx(0.5)
    # user + item terms: the user term's share of the sum of squares (they are orthogonal once centred)
    both = users[:, None] + items[None, :]
    user_ss = 4 * ((users - users.mean()) ** 2).sum()
    item_ss = 3 * ((items - items.mean()) ** 2).sum()
    assert logit_user_share(both) == pytest.approx(float(user_ss / (user_ss + item_ss)))
    assert logit_user_share(torch.full((2, 3), 7.0)) == 0.0


def test_logit_moments_merge_batches_and_ranks():
    logits = torch.from_numpy(np.random.default_rng(0).standard_normal((10, 6)))
    first, second = LogitMoments.zeros(6), LogitMoments.zeros(6)
    first.update(logits[:4])
    second.update(logits[4:])
    merged = LogitMoments.from_tensor(first.as_tensor() + second.as_tensor())  # what an all-reduce SUM yields
    assert merged.users == 10
    assert merged.user_share() == pytest.approx(logit_user_share(logits), abs=1e-12)


def test_rankings_of_one_rank_are_real_only_for_its_own_batches():
    heldout = UserItems.from_lists([[1]] * 5, 3)
    seen: list[tuple[list[int], bool]] = []

    def rank(rows: np.ndarray, real: bool) -> torch.Tensor:
        seen.append((rows.tolist(), real))
        return torch.zeros(len(rows), 1, dtype=torch.int64)

    evaluate_rankings(rank, heldout, (1,), (), batch_size=2, shard=(1, 2))
    assert seen == [([2, 3], True), ([0, 1], False)]  # batches [0 1] [2 3] [4]: rank 1 ranks the second, then pads


def test_logit_moments_of_item_slices_add_up_over_ranks():
    """Each rank adds every rank's users' logits for its own items and counts its own users: the sum of
    the ranks' moments is that of the whole logits."""
    logits = torch.from_numpy(np.random.default_rng(1).standard_normal((7, 10)))
    parts = [LogitMoments.zeros(10), LogitMoments.zeros(10)]
    parts[0].update(logits[:, :4], first_item=0, users=3)
    parts[1].update(logits[:, 4:], first_item=4, users=4)
    merged = LogitMoments.from_tensor(parts[0].as_tensor() + parts[1].as_tensor())
    assert merged.users == 7
    assert merged.user_share() == pytest.approx(logit_user_share(logits), abs=1e-12)
