"""The maps a fold-in places new items with (`trainer/alignment.py`), on small tensors with known answers."""
from __future__ import annotations

import pytest
import torch

from trainer.alignment import (ALPHAS, RANK_DECAYS, AffineMap, CannotAlign, fit_alignment, fit_rank_map,
                               logit_spread, ridge_loo)

FEATURES = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [1.0, 3.0], [3.0, 1.0]])
W = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]])
BIAS = torch.tensor([1.0, -2.0, 0.5])


def centred(x: torch.Tensor) -> torch.Tensor:
    return x.double() - x.double().mean(dim=0)


def brute_force_loo(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Row i's prediction by the ridge fit (intercept unpenalised) on every other row."""
    rows = []
    for i in range(a.shape[0]):
        keep = torch.arange(a.shape[0]) != i
        mean_a, mean_b = a[keep].mean(dim=0), b[keep].mean(dim=0)
        x, y = a[keep] - mean_a, b[keep] - mean_b
        weight = torch.linalg.solve(x.T @ x + alpha * torch.eye(a.shape[1], dtype=a.dtype), x.T @ y)
        rows.append(mean_b + (a[i] - mean_a) @ weight)
    return torch.stack(rows)


def test_ridge_recovers_a_planted_linear_relation() -> None:
    rows = FEATURES @ W + BIAS
    fit = ridge_loo(centred(FEATURES), centred(rows), (1e-12,))
    torch.testing.assert_close(fit.weight, W.double(), rtol=0, atol=1e-9)
    torch.testing.assert_close(fit.loo, centred(rows), rtol=0, atol=1e-9)  # exact: each left-out row is predicted


def test_fit_alignment_maps_a_new_text_to_its_planted_row() -> None:
    rows = FEATURES @ W + BIAS
    fitted = fit_alignment("ridge", FEATURES, rows, states=torch.eye(3))
    variance = float(centred(FEATURES).square().sum(dim=1).mean())
    assert fitted.alpha == pytest.approx(ALPHAS[0] * variance)  # the smallest penalty: nothing to shrink
    assert fitted.scale == pytest.approx(1.0, abs=1e-3)  # an exact fit is not shrunk
    new = torch.tensor([[4.0, -1.0], [0.5, 0.5]])
    torch.testing.assert_close(fitted(new), (new @ W + BIAS).double(), rtol=0, atol=1e-3)


def test_leave_one_out_residuals_are_exact_and_pick_the_best_penalty() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(9, 3, generator=generator, dtype=torch.float64)
    b = a @ torch.randn(3, 2, generator=generator, dtype=torch.float64) + torch.randn(9, 2, generator=generator,
                                                                                     dtype=torch.float64)
    alphas = (0.01, 1.0, 100.0)
    errors = {alpha: float((brute_force_loo(a, b, alpha) - b).square().sum()) for alpha in alphas}
    fit = ridge_loo(a - a.mean(dim=0), b - b.mean(dim=0), alphas)
    assert fit.alpha == min(errors, key=errors.get)
    torch.testing.assert_close(fit.loo + b.mean(dim=0), brute_force_loo(a, b, fit.alpha), rtol=0, atol=1e-10)


def test_logit_spread_counts_only_the_directions_users_read() -> None:
    states = torch.tensor([[1.0, 0.0]])
    true = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    predicted = torch.tensor([[0.5, 3.0], [-0.5, -3.0]])  # half the spread where the user looks
    assert logit_spread(states, true, predicted) == 2.0
    assert logit_spread(torch.eye(2), true, true / 4) == 4.0
    assert logit_spread(None, true, true / 4) == 4.0  # no states: the rows' own spread (users)
    with pytest.raises(CannotAlign, match="same logit"):
        logit_spread(torch.tensor([[0.0, 1.0]]), true, true)


def test_moments_keep_the_direction_and_match_mean_and_logit_spread() -> None:
    features = FEATURES[:4]  # mean (1, 1)
    rows = 10.0 + 3.0 * (features - 1.0)  # old rows: the features, moved and 3 times as wide
    fitted = fit_alignment("moments", features, rows, states=torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
    assert fitted.weight is None and fitted.alpha is None and fitted.scale == pytest.approx(3.0)
    assert fitted(torch.tensor([[3.0, 1.0]])).tolist() == [[16.0, 10.0]]


def test_affine_map_is_mean_plus_scaled_projection() -> None:
    mapped = AffineMap(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 5.0, 0.0]), W.double(), scale=2.0)
    assert mapped(torch.tensor([[2.0, 3.0]])).tolist() == [[2.0, 13.0, -4.0]]  # 2 * (1, 2) @ W, plus (0, 5, 0)


@pytest.mark.parametrize("features, entity, message", [(FEATURES[:1], "item", "1 old item"),
                                                       (FEATURES[:1].expand(4, -1), "user", "every old user's text")])
def test_a_map_needs_two_different_texts(features: torch.Tensor, entity: str, message: str) -> None:
    with pytest.raises(CannotAlign, match=message):
        fit_alignment("ridge", features, torch.zeros(features.shape[0], 3), torch.eye(3), entity)


def test_rank_map_ranks_new_items_for_the_users_whose_items_share_their_words() -> None:
    """Two tastes: users 0-9 read along state axis 0 and chose the items whose text has word 0, users 10-19
    along axis 1 and the items with word 1; word 2 is noise. The rank map, fitted on those choices alone (the
    rows are only its mean), ranks a new word-0 item above a new word-1 item for the first users and below it
    for the others, and picks its decay among RANK_DECAYS."""
    generator = torch.Generator().manual_seed(0)
    taste = torch.arange(12) % 2
    features = torch.zeros(12, 3)
    features[torch.arange(12), taste] = 1.0
    features[:, 2] = torch.rand(12, generator=generator)
    states = torch.zeros(20, 4)
    states[:10, 0], states[10:, 1] = 1.0, 1.0
    targets = (taste[None, :] == (torch.arange(20) >= 10).long()[:, None]).float()
    rows = torch.randn(12, 4, generator=generator)
    fitted = fit_rank_map(features, rows, states, targets, seed=0)
    assert fitted.scale > 0 and fitted.alpha in RANK_DECAYS
    torch.testing.assert_close(fitted.mean_out, rows.double().mean(dim=0))
    logits = states.double() @ fitted(torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])).T  # [20 users, 2 new items]
    assert (logits[:10, 0] > logits[:10, 1]).all() and (logits[10:, 1] > logits[10:, 0]).all()


def test_rank_map_needs_items_and_a_user_with_one() -> None:
    with pytest.raises(CannotAlign, match="3 old items with text and 2 scoring users"):
        fit_rank_map(FEATURES[:3], torch.zeros(3, 3), torch.eye(2, 3), torch.ones(2, 3), seed=0)
    with pytest.raises(CannotAlign, match="and 0 scoring users"):
        fit_rank_map(FEATURES, torch.zeros(6, 3), torch.eye(2, 3), torch.zeros(2, 6), seed=0)
