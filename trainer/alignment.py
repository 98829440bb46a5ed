"""Where a fold-in places new items' and users' collaborative rows (`cllm4rec fold-in --align`,
`--align-users`, docs/fold_in.md §2).

An affine map is fitted on the old items (users), from each one's text feature x [K] (an item: the mean
input word embedding of its own text; a user: the mean of their training items' features) to its trained
collaborative row z [K], and a new item (user) starts at the image of its own x:

- `moments`: z = μ_z + c·(x − μ_x), the old rows' mean and the spread of their logits;
- `ridge`:   z = μ_z + c·(x − μ_x) W, W the ridge regression of the old rows' deviations from μ_z on their
  features' deviations from μ_x, its penalty the one of `ALPHAS` with the least exact leave-one-out error.

- `rank` (items only): z = μ_z + (x − μ_x) W, W fitted by the model's own recommendation loss instead of
  least squares: the multinomial log-likelihood of some old users' training items under a softmax over the
  old items' mapped rows, read by those users' scoring states S [U, K] (`fit_rank_map`); c as below, P
  the predictions of maps fitted without the item's fold.

c puts the new rows' logits on the old rows' scale: with S [U, K] the scoring states of some old users, B
[n, K] the old rows' deviations from μ_z and P [n, K] what the map predicts for them when each is left out
of the fit (as a new item is), c = ‖S Bᵀ‖_F / ‖S Pᵀ‖_F. A least-squares image is shrunk toward the mean:
without c a new item's logit sits near each user's mean logit and seldom reaches the top of a list. A user
row is read by the backbone, not by a dot product: for users S is the identity, c = ‖B‖_F / ‖P‖_F, the
rows' own spread.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(-4.0, 2.5, 0.5))
"""The ridge penalties tried, as multiples of the features' mean squared deviation from their mean."""


class CannotAlign(ValueError):
    """The old items or users cannot fit a map (too few with text, texts alike, logits without spread)."""


@dataclass(frozen=True)
class AffineMap:
    """x [n, K] → mean_out + scale · (x − mean_in) @ weight, float64 [n, K]; weight None: the identity.
    alpha: the ridge penalty, or the `rank` map's weight decay (None for `moments`)."""

    mean_in: torch.Tensor
    mean_out: torch.Tensor
    weight: torch.Tensor | None
    scale: float
    alpha: float | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        deviation = x.double() - self.mean_in
        return self.mean_out + self.scale * (deviation if self.weight is None else deviation @ self.weight)


@dataclass(frozen=True)
class Ridge:
    """A ridge fit: its penalty, weight [K_in, K_out], and leave-one-out predictions [n, K_out] of its targets."""

    alpha: float
    weight: torch.Tensor
    loo: torch.Tensor


def ridge_loo(a: torch.Tensor, b: torch.Tensor, alphas: tuple[float, ...]) -> Ridge:
    """The ridge regression of b [n, K_out] on a [n, K_in], both centred (an unpenalised intercept), whose
    penalty among `alphas` (> 0) has the least leave-one-out squared error, exact: the residual of row i
    left out is its residual divided by 1 - h_i, h_i the hat matrix's diagonal (1/n for the intercept)."""
    a, b = a.double(), b.double()
    u, s, vt = torch.linalg.svd(a, full_matrices=False)
    ub = u.T @ b

    def left_out_residuals(alpha: float) -> torch.Tensor:
        shrink = s**2 / (s**2 + alpha)
        leverage = (u**2) @ shrink + 1.0 / a.shape[0]
        return (b - u @ (shrink[:, None] * ub)) / (1.0 - leverage)[:, None]

    alpha = min(alphas, key=lambda value: float(left_out_residuals(value).square().sum()))
    weight = vt.T @ ((s / (s**2 + alpha))[:, None] * ub)
    return Ridge(alpha, weight, b - left_out_residuals(alpha))


def logit_spread(states: torch.Tensor | None, true: torch.Tensor, predicted: torch.Tensor) -> float:
    """‖S Tᵀ‖_F / ‖S Pᵀ‖_F for states S [U, K] (None: the identity), true deviations T [n, K] and predicted
    ones P [n, K]: the factor that gives the predictions' logits the true rows' spread."""
    def read(rows: torch.Tensor) -> torch.Tensor:
        return rows.double() if states is None else states.double() @ rows.double().T

    spread = float(torch.linalg.norm(read(predicted)))
    if not spread > 0:
        raise CannotAlign("the map's predictions give every user the same logit")
    return float(torch.linalg.norm(read(true))) / spread


def fit_alignment(method: str, features: torch.Tensor, rows: torch.Tensor, states: torch.Tensor | None,
                  entity: str = "item") -> AffineMap:
    """The `moments` or `ridge` map (module docstring) from the old items' (`entity` "user": users')
    features [n, K] to their rows [n, K], its scale from the scoring states [U, K] of some old users (None:
    the rows' own spread)."""
    if features.shape[0] < 2:
        raise CannotAlign(f"{features.shape[0]} old {entity}(s) with text; a map needs at least 2")
    mean_in, mean_out = features.double().mean(dim=0), rows.double().mean(dim=0)
    a, b = features.double() - mean_in, rows.double() - mean_out
    variance = float(a.square().sum(dim=1).mean())
    if not variance > 0:
        raise CannotAlign(f"every old {entity}'s text feature is the same")
    if method == "moments":
        return AffineMap(mean_in, mean_out, None, logit_spread(states, b, a))
    fit = ridge_loo(a, b, tuple(alpha * variance for alpha in ALPHAS))
    return AffineMap(mean_in, mean_out, fit.weight, logit_spread(states, b, fit.loo), fit.alpha)


RANK_DECAYS = (1e-4, 1e-3, 1e-2)
"""The `rank` map's weight decays tried (on the sum of W's squares, beside a mean log-likelihood per user)."""
RANK_STEPS = (50, 200)
"""The numbers of full-batch Adam steps (lr `RANK_LR`, from W = 0) tried with each decay."""
RANK_LR = 1e-2
RANK_FOLDS = 5
"""Folds of the old items that choose the `rank` map's decay and steps, and predict each old row out of fold."""
RANK_K = 20
"""The cut-off of the recall that compares the settings."""


def _rank_weights(features: torch.Tensor, states: torch.Tensor, targets: torch.Tensor,
                  decay: float) -> dict[int, torch.Tensor]:
    """W [D, K] of the `rank` map after each of `RANK_STEPS` Adam steps from zero, from centred features [n, D],
    states [U, K] and multi-hot targets [U, n] (users without a target are left out): maximises the mean over
    users of Σ_i y_ui/|y_u| · log softmax_i(s_u · (x_i W)) less decay · ‖W‖²."""
    users = targets.sum(dim=1) > 0
    states, share = states[users], targets[users] / targets[users].sum(dim=1, keepdim=True)
    weight = torch.zeros(features.shape[1], states.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([weight], lr=RANK_LR)
    weights = {}
    for step in range(1, max(RANK_STEPS) + 1):
        logits = (states @ weight.T) @ features.T
        loss = -(share * logits.log_softmax(dim=1)).sum(dim=1).mean() + decay * weight.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in RANK_STEPS:
            weights[step] = weight.detach().clone()
    return weights


def _recall_among(states: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean Recall@`RANK_K` of the users with a target (targets [U, n]) when `rows` [n, K] are ranked among
    themselves by states [U, K], as new items are: hits over min(k, targets)."""
    users = targets.sum(dim=1) > 0
    top = (states[users] @ rows.T).topk(min(RANK_K, rows.shape[0]), dim=1).indices
    hits = targets[users].gather(1, top).sum(dim=1)
    return float((hits / targets[users].sum(dim=1).clamp(max=RANK_K)).mean())


def fit_rank_map(features: torch.Tensor, rows: torch.Tensor, states: torch.Tensor, targets: torch.Tensor,
                 seed: int, progress: bool = False) -> AffineMap:
    """The `rank` map (module docstring) from the old items' features [n, D] to their rows [n, K], fitted on
    the scoring states [U, K] of some old users and their training items among these n (0/1 [U, n]). Its decay
    and steps (`RANK_DECAYS` × `RANK_STEPS`) are those whose maps, each fitted without one of `RANK_FOLDS` folds
    of the items (drawn with `seed`), rank the left-out fold's items best for their users (`_recall_among`),
    as new items are ranked; c is `logit_spread` of the rows against those out-of-fold predictions. `progress`:
    a bar over the fits."""
    states, targets = states.float(), targets.float()
    n, users = features.shape[0], int((targets.sum(dim=1) > 0).sum())
    if n < RANK_FOLDS or users == 0:
        raise CannotAlign(f"{n} old items with text and {users} scoring users with one of them; the rank map "
                          f"needs at least {RANK_FOLDS} items and one user")
    mean_in = features.float().mean(dim=0)
    centred = features.float() - mean_in
    settings = [(decay, steps) for decay in RANK_DECAYS for steps in RANK_STEPS]
    recalls = {setting: [] for setting in settings}
    predicted = {setting: torch.zeros(n, rows.shape[1]) for setting in settings}
    bar = tqdm(total=RANK_FOLDS * len(RANK_DECAYS) + 1, desc="rank map fits", disable=not progress, leave=False)
    for fold in np.array_split(np.random.default_rng(seed).permutation(n), RANK_FOLDS):
        left_out = torch.from_numpy(fold)
        kept = torch.from_numpy(np.setdiff1d(np.arange(n), fold))
        for decay in RANK_DECAYS:
            for steps, weight in _rank_weights(centred[kept], states, targets[:, kept], decay).items():
                predicted[decay, steps][left_out] = centred[left_out] @ weight
                recalls[decay, steps].append(_recall_among(states, predicted[decay, steps][left_out],
                                                           targets[:, left_out]))
            bar.update()
    decay, steps = max(settings, key=lambda setting: float(np.mean(recalls[setting])))
    weight = _rank_weights(centred, states, targets, decay)[steps]
    bar.update()
    bar.close()
    deviations, out_of_fold = rows.double() - rows.double().mean(dim=0), predicted[decay, steps].double()
    scale = logit_spread(states, deviations, out_of_fold - out_of_fold.mean(dim=0))
    return AffineMap(mean_in.double(), rows.double().mean(dim=0), weight.double(), scale, decay)
