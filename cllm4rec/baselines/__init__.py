"""ID-only baselines trained and evaluated on the same split and metrics as CLLM4Rec."""

from cllm4rec.baselines.ease import EaseSelection, fit_ease, score_ease, select_ease
from cllm4rec.baselines.multivae import (
    MultiVAE,
    MultiVAEHistory,
    kl_beta,
    multivae_loss,
    score,
    train_multivae,
)
from cllm4rec.baselines.two_tower import TwoTower, TwoTowerHistory, train_two_tower

__all__ = [
    "EaseSelection",
    "MultiVAE",
    "MultiVAEHistory",
    "fit_ease",
    "kl_beta",
    "multivae_loss",
    "score",
    "score_ease",
    "select_ease",
    "train_multivae",
    "train_two_tower",
    "TwoTower",
    "TwoTowerHistory",
]
