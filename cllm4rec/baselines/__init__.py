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
]
