"""Where a fold-in places new items' and users' collaborative rows (`cllm4rec fold-in --align`,
`--align-users`, docs/fold_in.md §2).

An affine map is fitted on the old items (users), from each one's text feature x [K] (an item: the mean
input word embedding of its own text; a user: the mean of their training items' features) to its trained
collaborative row z [K], and a new item (user) starts at the image of its own x:

- `moments`: z = μ_z + c·(x − μ_x), the old rows' mean and the spread of their logits;
- `ridge`:   z = μ_z + c·(x − μ_x) W, W the ridge regression of the old rows' deviations from μ_z on their
  features' deviations from μ_x, its penalty the one of `ALPHAS` with the least exact leave-one-out error.

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

ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(-4.0, 2.5, 0.5))
"""The ridge penalties tried, as multiples of the features' mean squared deviation from their mean."""


class CannotAlign(ValueError):
    """The old items or users cannot fit a map (too few with text, texts alike, logits without spread)."""


@dataclass(frozen=True)
class AffineMap:
    """x [n, K] → mean_out + scale · (x − mean_in) @ weight, float64 [n, K]; weight None: the identity.
    alpha: the ridge penalty (None for `moments`)."""

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
