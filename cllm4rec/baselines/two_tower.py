"""Two-tower retrieval: an MLP per side, dot-product score, trained with a sampled softmax.

With fixed input features — the exported CLLM4Rec user and item embeddings, collaborative and
content concatenated — it is CLLM4Rec-Emb (the paper's latency-friendly path); without features
each side learns an ID embedding, the ID-only Two-Tower baseline. Features are standardised per dimension (CLLM4Rec tables
have σ ≈ 0.02).

Sampled softmax, a labelled approximation of the full softmax over J items used only in training:
each (user, positive item) pair of the training interactions is scored against its positive and
`negatives` items drawn uniformly per batch and shared by the batch (uniform sampling: the logQ
correction is a constant and cancels); a negative equal to the row's positive is masked out.
Evaluation ranks the whole catalogue with the full dot products. The epoch is chosen by validation
NDCG@100.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from cllm4rec.interactions import UserItems
from cllm4rec.metrics import evaluate_scores


class Tower(nn.Module):
    """rows [B] → vectors [B, out]: an MLP over fixed features [N, F] (standardised), or over a learned
    ID embedding [N, id_dim] when `features` is None."""

    def __init__(self, rows: int, features: torch.Tensor | None, id_dim: int, hidden: int, out: int,
                 generator: torch.Generator):
        super().__init__()
        if features is None:
            self.embedding = nn.Embedding(rows, id_dim)
            nn.init.normal_(self.embedding.weight, std=0.1, generator=generator)
            width = id_dim
        else:
            if features.shape[0] != rows:
                raise ValueError(f"features have {features.shape[0]} rows for {rows} ids")
            features = features.float()
            self.register_buffer("features", (features - features.mean(0)) / features.std(0).clamp(min=1e-8))
            self.embedding, width = None, features.shape[1]
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, out))
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.xavier_normal_(layer.weight, generator=generator)
            nn.init.zeros_(layer.bias)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features[rows] if self.embedding is None else self.embedding(rows))


class TwoTower(nn.Module):
    """Score s(u, j) = user_tower(u) · item_tower(j)."""

    def __init__(self, n_users: int, n_items: int, user_features: torch.Tensor | None = None,
                 item_features: torch.Tensor | None = None, *, id_dim: int = 64, hidden: int = 256, out: int = 64,
                 seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.n_items = n_items
        self.users = Tower(n_users, user_features, id_dim, hidden, out, generator)
        self.items = Tower(n_items, item_features, id_dim, hidden, out, generator)

    @torch.no_grad()
    def score_all(self, users: np.ndarray) -> torch.Tensor:
        """Scores [B, J] of every item for `users` [B] (one matrix product)."""
        return self.users(torch.as_tensor(users, dtype=torch.long)) @ self.items(torch.arange(self.n_items)).t()


@dataclass
class TwoTowerHistory:
    losses: list[float] = field(default_factory=list)  # mean sampled-softmax loss per epoch
    val_ndcg: list[float] = field(default_factory=list)
    best_epoch: int = -1


def train_two_tower(train: UserItems, val: UserItems, *, user_features: torch.Tensor | None = None,
                    item_features: torch.Tensor | None = None, epochs: int = 30, batch_size: int = 1024,
                    negatives: int = 256, lr: float = 1e-3, seed: int = 0, progress: bool = True
                    ) -> tuple[TwoTower, TwoTowerHistory]:
    """Train on every (user, training item) pair; return the model of the best validation epoch."""
    model = TwoTower(train.n_users, train.n_items, user_features, item_features, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    users = torch.from_numpy(np.repeat(np.arange(train.n_users), train.lengths()))
    items = torch.from_numpy(train.indices.astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    history, best = TwoTowerHistory(), None
    for epoch in tqdm(range(epochs), desc="two-tower", disable=not progress, leave=False):
        model.train()
        order = torch.randperm(users.shape[0], generator=generator)
        total = 0.0
        for start in range(0, order.shape[0], batch_size):
            batch = order[start : start + batch_size]
            u, pos = model.users(users[batch]), items[batch]
            negative = torch.randint(0, train.n_items, (negatives,), generator=generator)
            logits = torch.cat([(u * model.items(pos)).sum(1, keepdim=True), u @ model.items(negative).t()], dim=1)
            logits[:, 1:] = logits[:, 1:].masked_fill(negative[None, :] == pos[:, None], float("-inf"))
            loss = F.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        history.losses.append(total / users.shape[0])
        model.eval()
        ndcg = evaluate_scores(model.score_all, train, val, (), (100,))["ndcg@100"]
        history.val_ndcg.append(ndcg)
        if best is None or ndcg > history.val_ndcg[history.best_epoch]:
            history.best_epoch, best = epoch, copy.deepcopy(model.state_dict())
    if best is not None:
        model.load_state_dict(best)
    return model.eval(), history
