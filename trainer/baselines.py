"""MostPop, Multi-VAE and EASE on the same split as CLLM4Rec (the latter two selected on validation),
scored on test."""
from __future__ import annotations

import math
import time

from cllm4rec.baselines import select_ease, train_multivae
from cllm4rec.baselines.ease import score_ease
from cllm4rec.baselines.mostpop import item_popularity, score_mostpop
from cllm4rec.baselines.multivae import score as score_multivae
from cllm4rec.interactions import UserItems
from cllm4rec.metrics import evaluate_scores
from trainer.config import BaselineConfig, EvalConfig


def multivae_anneal_steps(n_users: int, epochs: int, batch_size: int = 500) -> int:
    """KL annealing length so β reaches its 0.2 cap after ~75% of the updates (as Liang et al.'s
    200k steps do on ML-20M), instead of a fixed count that small datasets never reach."""
    updates = epochs * math.ceil(n_users / batch_size)
    return max(1, int(0.75 * updates / 0.2))


def run_baselines(
    train: UserItems, val: UserItems, test: UserItems, cfg: BaselineConfig, eval_cfg: EvalConfig, seed: int,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """{'MostPop': test metrics, 'Multi-VAE': …, 'EASE': …} for the enabled ones (each with 'seconds', the
    last two with their selection)."""
    ks = (tuple(eval_cfg.recall_ks), tuple(eval_cfg.ndcg_ks))
    results: dict[str, dict[str, float]] = {}
    if cfg.mostpop:
        start = time.perf_counter()
        popularity = item_popularity(train)
        metrics = evaluate_scores(lambda rows: score_mostpop(popularity, rows), train, test, *ks)
        results["MostPop"] = {**metrics, "seconds": time.perf_counter() - start}
    if cfg.multivae:
        start = time.perf_counter()
        model, history = train_multivae(
            train, val, epochs=cfg.multivae_epochs, seed=seed, progress=progress,
            total_anneal_steps=multivae_anneal_steps(train.n_users, cfg.multivae_epochs),
        )
        metrics = evaluate_scores(lambda rows: score_multivae(model, train, rows), train, test, *ks)
        results["Multi-VAE"] = {**metrics, "best_epoch": float(history.best_epoch), "seconds": time.perf_counter() - start}
    if cfg.ease:
        start = time.perf_counter()
        chosen = select_ease(train, val, selection_keys=eval_cfg.selection())
        metrics = evaluate_scores(lambda rows: score_ease(chosen.weights, train, rows), train, test, *ks)
        results["EASE"] = {**metrics, "l2": float(chosen.l2), "seconds": time.perf_counter() - start}
    return results
