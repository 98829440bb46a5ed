"""ID-only baselines trained and evaluated on the same split and metrics as CLLM4Rec."""

from cllm4rec.baselines.ease import EaseSelection, fit_ease, score_ease, select_ease
from cllm4rec.baselines.mostpop import item_popularity, score_mostpop
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
    "item_popularity",
    "kl_beta",
    "multivae_loss",
    "score",
    "score_ease",
    "score_mostpop",
    "select_ease",
    "train_multivae",
    "train_two_tower",
    "TwoTower",
    "TwoTowerHistory",
]
