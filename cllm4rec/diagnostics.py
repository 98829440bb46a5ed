"""How user-specific a model's recommendations are, from its scoring pass.

Over U users' recommendation prompts: the last-position hidden states H [U, K] (what the item head
reads) and the item logits L [U, J]. A model that has collapsed to popularity gives every user
(nearly) the same hidden state and the same logits: the shares below are then near 0 and the mean
cosine near 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


def hidden_user_variance(hidden: torch.Tensor) -> float:
    """Share of the hidden states' second moment that varies across users, in [0, 1].

    hidden: [U, K]. Returns mean_d Var_u(H[u, d]) / mean_u(‖H[u]‖² / K) (population variance):
    0 when every user gets the same hidden state, 1 when the states average to 0 over users; 0.0
    when H is all zeros.
    """
    h = hidden.double()
    scale = h.square().mean()
    return float(h.var(dim=0, unbiased=False).mean() / scale) if scale > 0 else 0.0


def mean_pairwise_cosine(hidden: torch.Tensor) -> float:
    """Mean cosine similarity over the U(U−1) ordered pairs of distinct rows of hidden [U, K] (U ≥ 2);
    a zero row counts as cosine 0 with every other row."""
    users = hidden.shape[0]
    if users < 2:
        raise ValueError(f"need at least 2 rows for a pairwise cosine, got {users}")
    unit = F.normalize(hidden.double(), dim=1)
    total = unit.sum(dim=0)
    return float((total @ total - unit.square().sum()) / (users * (users - 1)))


@dataclass
class LogitMoments:
    """Per-item sums over users of the logits and their squares, enough for the logit user share;
    filled batch by batch, and summed over ranks through `as_tensor` / `from_tensor`."""

    sums: torch.Tensor
    """float64 [J]: Σ_u L[u, j]."""
    squares: torch.Tensor
    """float64 [J]: Σ_u L[u, j]²."""
    users: int = 0

    @classmethod
    def zeros(cls, n_items: int, device: torch.device | str = "cpu") -> LogitMoments:
        return cls(torch.zeros(n_items, dtype=torch.float64, device=device),
                   torch.zeros(n_items, dtype=torch.float64, device=device))

    def update(self, logits: torch.Tensor, first_item: int = 0, users: int | None = None) -> None:
        """Add the rows of logits [B, J'] (one per user, raw: no item excluded) of the items
        first_item .. first_item + J' − 1 (all of them by default), counted as `users` users (default
        B: a rank of a row-sharded item table adds every rank's users for its own items and counts
        only its own, so that the ranks' sum counts each user once)."""
        values = logits.detach().to(self.sums.device, torch.float64)
        items = slice(first_item, first_item + values.shape[1])
        self.sums[items] += values.sum(dim=0)
        self.squares[items] += values.square().sum(dim=0)
        self.users += values.shape[0] if users is None else users

    def as_tensor(self) -> torch.Tensor:
        """float64 [2J + 1]: sums, squares, user count."""
        return torch.cat([self.sums, self.squares, self.sums.new_tensor([float(self.users)])])

    @classmethod
    def from_tensor(cls, table: torch.Tensor) -> LogitMoments:
        """Inverse of `as_tensor` (e.g. after an all-reduce)."""
        n_items = (table.shape[0] - 1) // 2
        return cls(table[:n_items], table[n_items : 2 * n_items], int(round(float(table[-1]))))

    def user_share(self) -> float:
        """Σ_{u,j} (L[u,j] − m_j)² / Σ_{u,j} (L[u,j] − m)², with m_j the item's mean over users and m the
        mean of all logits; 0.0 for no users or logits constant to float64 precision (a total below
        1e-12 of Σ L², where the sums' rounding would decide the share)."""
        if self.users == 0:
            return 0.0
        within = (self.squares - self.sums.square() / self.users).sum()
        total = self.squares.sum() - self.sums.sum().square() / (self.users * self.sums.shape[0])
        if total <= 1e-12 * self.squares.sum():
            return 0.0
        return float((within / total).clamp(0.0, 1.0))


def logit_user_share(logits: torch.Tensor) -> float:
    """Share of the logits' variance that is user-specific, in [0, 1], computed on raw logits [U, J]
    (training items are not excluded).

    The total sum of squares Σ_{u,j} (L[u,j] − mean(L))² splits into the part around each item's
    mean over users, Σ_j U·Var_u(L[u,j]) (what differs between users), and the spread of the item
    means (a popularity score shared by every user). The share is the first part over the total: 0
    when every user gets the same logits, 1 when the logits are a user term alone.
    """
    moments = LogitMoments.zeros(logits.shape[1], logits.device)
    moments.update(logits)
    return moments.user_share()
