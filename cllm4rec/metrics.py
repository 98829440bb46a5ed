"""Top-K ranking metrics (Recall@K, NDCG@K) of the evaluation protocol (docs/method.md §11),
vectorised in torch.

Protocol: only training items are excluded from the ranking (score -inf); an item whose score is
-inf is not a candidate, so when K exceeds the candidate count the ranking is simply shorter (padded
with -1). Per-user values are averaged over the users that have held-out items only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cllm4rec.interactions import UserItems

PAD = -1
"""Item index marking a ranking position past the last candidate."""

SELECTION_KEYS = ("recall@20", "recall@40", "ndcg@100")
"""Model-selection criterion of the authors' code: the sum of these validation metrics."""


def topk_excluding(
    scores: torch.Tensor, exclude: UserItems, rows: np.ndarray, k: int,
    columns: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Top-k items per row after excluding each user's training items.

    Args:
        scores: float [B, J]; row b scores the catalogue for user ``rows[b]``. Not modified.
        exclude: items to exclude (set to -inf), indexed by user.
        rows: int [B]; the user of each score row.
        k: cut-off, >= 1.
        columns: (lo, hi) when the scores [B, hi − lo] cover only the items lo..hi−1 (one rank's
            shard of a row-sharded item table); the returned items are still catalogue numbers.

    Returns:
        int64 [B, min(k, J)] item indices, best first. Ties are broken deterministically by the
        lower item index. Positions past the last candidate (items scored -inf, excluded ones
        included) hold `PAD` (-1). A NaN score of a candidate item is an error.

    One clone of the scores, a scatter of -inf over the excluded items and one `topk`: O(B·J) work
    with no [B, J] index or mask tensor, the exact tie rule redone only for rows whose k-th value
    ties with an item left out.
    """
    lo, hi = (0, exclude.n_items) if columns is None else columns
    if scores.ndim != 2 or scores.shape[1] != hi - lo or not 0 <= lo <= hi <= exclude.n_items:
        raise ValueError(f"scores must be [B, {hi - lo}] (items {lo}..{hi - 1} of {exclude.n_items}), "
                         f"got {tuple(scores.shape)}")
    if len(rows) != scores.shape[0]:
        raise ValueError(f"{len(rows)} rows for {scores.shape[0]} score rows")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_rows, n_items = scores.shape
    k = min(k, n_items)
    if n_rows == 0 or k == 0:
        return torch.full((n_rows, k), PAD, dtype=torch.int64, device=scores.device)
    masked = scores.detach().clone()
    sub = exclude.subset(rows)
    inside = (sub.indices >= lo) & (sub.indices < hi)
    row_ids = torch.from_numpy(np.repeat(np.arange(n_rows), sub.lengths())[inside]).to(scores.device)
    masked[row_ids, torch.from_numpy(sub.indices[inside] - lo).to(scores.device)] = float("-inf")
    values, items = masked.topk(k, dim=1)  # NaN sorts above every number: any candidate NaN shows here
    if torch.isnan(values).any():
        raise ValueError("scores contain NaN")
    # topk breaks ties arbitrarily. Where the k-th value also ties with an item left out, the exact
    # selection (every item above it, then the lowest-index ties) is redone for those rows only.
    kth = values[:, -1:]
    cut = ((masked == kth).sum(dim=1) > (values == kth).sum(dim=1)) & torch.isfinite(kth[:, 0])
    if cut.any():
        items[cut] = _lowest_index_topk(masked[cut], kth[cut], k)
    items = items.sort(dim=1).values  # ascending index, then a stable sort by score: ties by lower index
    values = masked.gather(1, items)
    order = values.sort(dim=1, descending=True, stable=True).indices
    ranked = items.gather(1, order) + lo
    return ranked.masked_fill(values.gather(1, order) == float("-inf"), PAD)


def merge_topk(items: torch.Tensor, values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best k of candidate items [B, C] (catalogue numbers, `PAD` for none) with their scores [B, C]
    (-inf at PAD), by the rule of `topk_excluding`: higher score first, ties by the lower item. Each
    shard's own top-k (`topk_excluding` with `columns`) merged here gives the whole catalogue's top-k.
    Returns (items [B, min(k, C)], scores), PAD / -inf past the last candidate."""
    ascending = items.masked_fill(items == PAD, torch.iinfo(torch.int64).max).argsort(dim=1, stable=True)
    items, values = items.gather(1, ascending), values.gather(1, ascending)
    best = values.argsort(dim=1, descending=True, stable=True)[:, :k]
    items, values = items.gather(1, best), values.gather(1, best)
    return items.masked_fill(values == float("-inf"), PAD), values


def _lowest_index_topk(masked: torch.Tensor, kth: torch.Tensor, k: int) -> torch.Tensor:
    """Exactly k items per row of masked [R, J]: all strictly above the k-th value kth [R, 1], then the
    lowest-index ties; int64 [R, k] in ascending index order."""
    above = masked > kth
    tied = masked == kth
    room = k - above.sum(dim=1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(dim=1) <= room))
    return chosen.nonzero()[:, 1].view(masked.shape[0], k)


def _hits(topk: torch.Tensor, heldout: torch.Tensor, k: int) -> torch.Tensor:
    """float64 [B, min(k, K')]: 1 where the ranked item is held out, 0 otherwise (PAD → 0)."""
    ranked = topk[:, :k]
    valid = ranked != PAD
    hit = heldout.to(torch.bool).gather(1, ranked.clamp(min=0)) & valid
    return hit.to(torch.float64)


def _n_heldout(heldout: torch.Tensor) -> torch.Tensor:
    return heldout.to(torch.bool).sum(dim=1).to(torch.float64)


def recall_at_k(topk: torch.Tensor, heldout: torch.Tensor, k: int) -> torch.Tensor:
    """Recall@k = |top-k ∩ held-out| / min(k, |held-out|), per user.

    Args:
        topk: int64 [B, K'] ranking from `topk_excluding` (K' >= min(k, J) expected).
        heldout: [B, J] multi-hot (bool or numeric) held-out items.
        k: cut-off.

    Returns:
        float64 [B]; NaN for users without held-out items (0/0).
    """
    hits = _hits(topk, heldout, k).sum(dim=1)
    return hits / _n_heldout(heldout).clamp(max=k)


def ndcg_at_k(topk: torch.Tensor, heldout: torch.Tensor, k: int) -> torch.Tensor:
    """NDCG@k with binary gains and discount 1/log2(rank+1), rank from 1, per user.

    IDCG sums the discounts of the first min(k, |held-out|) positions. Shapes as in
    `recall_at_k`; returns float64 [B], NaN for users without held-out items.
    """
    hits = _hits(topk, heldout, k)
    discount = 1.0 / torch.log2(
        torch.arange(2, k + 2, dtype=torch.float64, device=topk.device)
    )
    dcg = (hits * discount[: hits.shape[1]]).sum(dim=1)
    ideal_len = _n_heldout(heldout).clamp(max=k).to(torch.int64)
    cumulative = torch.cat([discount.new_zeros(1), discount.cumsum(0)])
    idcg = cumulative[ideal_len]
    return dcg / idcg


@dataclass
class MetricAccumulator:
    """Running sums and counts of per-user metric values.

    Keeping sums and counts (not means) lets distributed callers all-reduce `as_tensor()` and
    rebuild with `from_tensor`. NaN values (users without held-out items) are not counted.
    """

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def update(self, per_user: Mapping[str, torch.Tensor]) -> None:
        """Add per-user values: name → float [B]."""
        for name, values in per_user.items():
            finite = values[~torch.isnan(values)].to(torch.float64)
            self.sums[name] = self.sums.get(name, 0.0) + float(finite.sum())
            self.counts[name] = self.counts.get(name, 0) + int(finite.numel())

    def as_tensor(self) -> tuple[list[str], torch.Tensor]:
        """Metric names (sorted) and float64 [2, M] holding sums (row 0) and counts (row 1)."""
        names = sorted(self.sums)
        table = torch.tensor(
            [[self.sums[n] for n in names], [float(self.counts[n]) for n in names]],
            dtype=torch.float64,
        )
        return names, table.reshape(2, len(names))

    @classmethod
    def from_tensor(cls, names: Sequence[str], table: torch.Tensor) -> MetricAccumulator:
        """Inverse of `as_tensor` (e.g. after an all-reduce of the table)."""
        table = table.detach().to("cpu", torch.float64)
        return cls(
            sums={n: float(table[0, i]) for i, n in enumerate(names)},
            counts={n: int(round(float(table[1, i]))) for i, n in enumerate(names)},
        )

    def result(self) -> dict[str, float]:
        """Mean per metric over counted users (0.0 for a metric that counted nobody)."""
        return {n: self.sums[n] / self.counts[n] if self.counts[n] else 0.0 for n in self.sums}


def evaluate_scores(
    score_fn: Callable[[np.ndarray], torch.Tensor],
    train: UserItems,
    heldout: UserItems,
    ks_recall: Sequence[int] = (20, 40),
    ks_ndcg: Sequence[int] = (100,),
    batch_size: int = 256,
    sort_key: np.ndarray | None = None,
) -> dict[str, float]:
    """Average Recall@K and NDCG@K over the users that have held-out items, ranking each user's
    scores without its `train` items (`topk_excluding`).

    Args:
        score_fn: maps user indices int64 [B] to scores float [B, J] (any device).
        train: items excluded from each user's ranking.
        heldout, ks_recall, ks_ndcg, batch_size, sort_key: as in `evaluate_rankings`.

    Returns:
        ``{"recall@20": ..., "recall@40": ..., "ndcg@100": ..., "n_users_evaluated": n}``.
    """
    if (train.n_users, train.n_items) != (heldout.n_users, heldout.n_items):
        raise ValueError(
            f"train is {train.n_users}x{train.n_items} but heldout is "
            f"{heldout.n_users}x{heldout.n_items}"
        )
    k = max([*ks_recall, *ks_ndcg], default=1)
    return evaluate_rankings(lambda rows, real: topk_excluding(score_fn(rows), train, rows, k), heldout,
                             ks_recall, ks_ndcg, batch_size, sort_key)


def evaluate_rankings(
    rank_fn: Callable[[np.ndarray, bool], torch.Tensor],
    heldout: UserItems,
    ks_recall: Sequence[int] = (20, 40),
    ks_ndcg: Sequence[int] = (100,),
    batch_size: int = 256,
    sort_key: np.ndarray | None = None,
    shard: tuple[int, int] = (0, 1),
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Average Recall@K and NDCG@K over the users that have held-out items.

    Args:
        rank_fn: maps (user indices int64 [B], real) to each user's ranking int64 [B, ≥ max K]
            (`topk_excluding`'s format, any device).
        heldout: items to find (validation or test).
        ks_recall, ks_ndcg: cut-offs.
        batch_size: users per `rank_fn` call; users are visited in ascending order, or in
            ascending (sort_key[user], user) order when `sort_key` [U] is given (e.g. prompt
            lengths, so that batches pad little). The averages do not depend on the order.
        shard: (rank, world size): this process ranks batches rank, rank+R, ... and makes
            padding calls (real False, the ranking discarded) so every rank calls `rank_fn` equally
            often, as collective forwards need; `all_reduce` then sums the metric sums and counts
            of all ranks, so every rank returns the figures of the whole user set.

    Returns:
        ``{"recall@20": ..., "recall@40": ..., "ndcg@100": ..., "n_users_evaluated": n}``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not [*ks_recall, *ks_ndcg]:
        raise ValueError("no cut-off given")
    users = np.flatnonzero(heldout.lengths() > 0)
    if sort_key is not None:
        users = users[np.argsort(np.asarray(sort_key)[users], kind="stable")]
    names = [f"recall@{k}" for k in ks_recall] + [f"ndcg@{k}" for k in ks_ndcg]
    acc = MetricAccumulator(dict.fromkeys(names, 0.0), dict.fromkeys(names, 0))
    batches = [users[start : start + batch_size] for start in range(0, users.size, batch_size)]
    rank, world = shard
    mine = batches[rank::world]
    for index in range(-(-len(batches) // world)):
        if index >= len(mine):
            rank_fn(batches[0], False)  # padding call: this rank has no batch left, the others do
            continue
        rows = mine[index]
        topk = rank_fn(rows, True)
        target = heldout.to_dense(rows, dtype=torch.bool, device=topk.device)
        per_user = {f"recall@{k}": recall_at_k(topk, target, k) for k in ks_recall}
        per_user |= {f"ndcg@{k}": ndcg_at_k(topk, target, k) for k in ks_ndcg}
        acc.update(per_user)
    if all_reduce is not None:
        ordered, table = acc.as_tensor()
        acc = MetricAccumulator.from_tensor(ordered, all_reduce(table))
    means = acc.result()
    out: dict[str, float] = {n: means.get(n, 0.0) for n in names}
    out["n_users_evaluated"] = int(users.size)
    return out


def selection_score(metrics: Mapping[str, float], keys: Sequence[str] = SELECTION_KEYS) -> float:
    """Sum of the named metrics (default Recall@20 + Recall@40 + NDCG@100)."""
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise KeyError(f"metrics lack {missing}")
    return float(sum(metrics[k] for k in keys))
