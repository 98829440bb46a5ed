"""Multi-VAE (Liang et al., 2018): variational autoencoder with a multinomial likelihood.

Encoder J → 600 → 200 (mean and log-variance), decoder 200 → 600 → J, tanh activations,
L2-normalised input with dropout 0.5, KL weight annealed linearly per update up to a cap of 0.2.
The epoch is chosen by validation NDCG@100.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from cllm4rec.interactions import UserItems
from cllm4rec.metrics import evaluate_scores


class MultiVAE(nn.Module):
    """Multi-VAE network.

    Args:
        n_items: catalogue size J.
        hidden: width of the hidden layer (600 in the paper).
        latent: latent dimension (200 in the paper).
        dropout: dropout on the normalised input during training.
        generator: RNG for the weight initialisation (CPU).
    """

    def __init__(
        self,
        n_items: int,
        hidden: int = 600,
        latent: int = 200,
        dropout: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.latent = latent
        self.dropout = dropout
        self.enc_hidden = nn.Linear(n_items, hidden)
        self.enc_out = nn.Linear(hidden, 2 * latent)
        self.dec_hidden = nn.Linear(latent, hidden)
        self.dec_out = nn.Linear(hidden, n_items)
        for layer in (self.enc_hidden, self.enc_out, self.dec_hidden, self.dec_out):
            nn.init.xavier_normal_(layer.weight, generator=generator)
            nn.init.normal_(layer.bias, std=0.001, generator=generator)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode and decode a batch.

        Args:
            x: float [B, J] multi-hot (or counts) of the users' training items.
            generator: RNG for dropout and the reparameterisation noise (training mode only).

        Returns:
            logits [B, J], mu [B, latent], logvar [B, latent]. In eval mode the decoder reads mu.
        """
        h = F.normalize(x, dim=1)
        if self.training and self.dropout > 0:
            keep = torch.rand(h.shape, generator=generator, device=h.device) >= self.dropout
            h = h * keep / (1.0 - self.dropout)
        mu, logvar = self.enc_out(torch.tanh(self.enc_hidden(h))).split(self.latent, dim=1)
        z = mu
        if self.training:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device)
            z = mu + noise * torch.exp(0.5 * logvar)
        logits = self.dec_out(torch.tanh(self.dec_hidden(z)))
        return logits, mu, logvar


def multivae_loss(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Negative ELBO with a β-weighted KL, averaged over the batch.

    Returns (loss, multinomial negative log-likelihood, KL), each a scalar.
    """
    nll = -(F.log_softmax(logits, dim=1) * x).sum(dim=1).mean()
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1).mean()
    return nll + beta * kl, nll, kl


def kl_beta(update: int, total_anneal_steps: int, anneal_cap: float = 0.2) -> float:
    """KL weight after ``update`` parameter updates: min(cap, update / total_anneal_steps)."""
    if total_anneal_steps <= 0:
        return anneal_cap
    return min(anneal_cap, update / total_anneal_steps)


@torch.no_grad()
def score(model: MultiVAE, train: UserItems, rows: np.ndarray) -> torch.Tensor:
    """Scores float [len(rows), J] (decoder logits) from the users' training items."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = model(train.to_dense(rows, device=device))[0]
    model.train(was_training)
    return logits


@dataclass
class MultiVAEHistory:
    """Per-epoch records and the chosen epoch.

    Each record holds epoch, mean loss / nll / kl over the epoch's updates, the KL weight of the
    epoch's last update (beta) and the validation NDCG@100 (val_ndcg@100).
    """

    records: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val: float = float("-inf")


def _device_generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def train_multivae(
    train: UserItems,
    val: UserItems,
    epochs: int = 200,
    seed: int = 0,
    patience: int | None = 20,
    device: str | torch.device = "cpu",
    progress: bool = True,
    batch_size: int = 500,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    total_anneal_steps: int = 200_000,
    anneal_cap: float = 0.2,
    hidden: int = 600,
    latent: int = 200,
    dropout: float = 0.5,
    eval_batch_size: int = 1024,
) -> tuple[MultiVAE, MultiVAEHistory]:
    """Train Multi-VAE on ``train`` and keep the epoch with the best validation NDCG@100.

    Args:
        train: training items per user (model input and reconstruction target).
        val: validation items per user (model selection only).
        epochs: maximum number of epochs.
        seed: seeds the initialisation, the user shuffling, dropout and the latent noise.
        patience: stop after this many epochs without improvement (None: never stop early).
        device: where to train; CPU runs are deterministic for a fixed seed.
        progress: show a tqdm bar over epochs.
        total_anneal_steps, anneal_cap: KL weight schedule, see `kl_beta`.

    Returns:
        The model in eval mode holding the best epoch's weights, and the training history.
    """
    device = torch.device(device)
    init_generator = torch.Generator().manual_seed(seed)
    model = MultiVAE(train.n_items, hidden, latent, dropout, generator=init_generator).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    noise_generator = _device_generator(device, seed + 1)
    order_rng = np.random.default_rng(seed)
    users = np.flatnonzero(train.lengths() > 0)
    history = MultiVAEHistory()
    best_state: dict[str, torch.Tensor] = {}
    update = 0
    bar = tqdm(range(epochs), desc="Multi-VAE", disable=not progress)
    for epoch in bar:
        model.train()
        totals = np.zeros(3)
        beta = kl_beta(update, total_anneal_steps, anneal_cap)
        shuffled = order_rng.permutation(users)
        n_batches = 0
        for start in range(0, shuffled.size, batch_size):
            x = train.to_dense(shuffled[start : start + batch_size], device=device)
            beta = kl_beta(update, total_anneal_steps, anneal_cap)
            logits, mu, logvar = model(x, generator=noise_generator)
            loss, nll, kl = multivae_loss(logits, x, mu, logvar, beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            update += 1
            n_batches += 1
            totals += (loss.item(), nll.item(), kl.item())
        loss_mean, nll_mean, kl_mean = totals / max(n_batches, 1)
        val_ndcg = evaluate_scores(
            lambda rows: score(model, train, rows),
            train,
            val,
            ks_recall=(),
            ks_ndcg=(100,),
            batch_size=eval_batch_size,
        )["ndcg@100"]
        history.records.append(
            {
                "epoch": epoch,
                "loss": loss_mean,
                "nll": nll_mean,
                "kl": kl_mean,
                "beta": beta,
                "val_ndcg@100": val_ndcg,
            }
        )
        if val_ndcg > history.best_val:
            history.best_epoch, history.best_val = epoch, val_ndcg
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{loss_mean:.3f}", ndcg100=f"{val_ndcg:.4f}", best=history.best_epoch)
        if patience is not None and epoch - history.best_epoch >= patience:
            break
    if best_state:
        model.load_state_dict(best_state)
    model.eval()
    return model, history
