"""Use a saved model (<output_dir>/model): evaluate it, or recommend top-M unseen items per user."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.atomic import atomic_file
from data_prep.errors import DataPrepError
from trainer import checkpoint as ckpt
from trainer.build import RunParts, build_run, load_weights
from trainer.config import TrainConfig, config_from_dict
from trainer.engine import PlainEngine
from trainer.evaluate import evaluate, recommend
from trainer.data import user_item_lists
from trainer.pipeline import identity_of


def load_saved(model_dir: Path) -> tuple[TrainConfig, RunParts, PlainEngine]:
    """Rebuild the run of a saved model and load its tables; refuses a changed dataset or backbone."""
    saved = ckpt.load_model(Path(model_dir))
    config = config_from_dict(saved.config)
    parts = build_run(config)
    ckpt.check_identity(saved.identity, identity_of(config, parts))
    load_weights(parts.model, saved.tables, saved.extra)
    engine = PlainEngine(parts.model, config.pretrain.lr, config.finetune.lr)
    return config, parts, engine


def _prompt(config: TrainConfig) -> str:
    return "rec" if config.finetune.enabled else "interaction"


def evaluate_saved(model_dir: Path, split: str = "test") -> dict[str, float]:
    config, parts, engine = load_saved(model_dir)
    return evaluate(engine, parts.corpora, user_item_lists(parts.dataset, split), prompt=_prompt(config),
                    seed=config.seed, batch_size=config.eval.batch_size, recall_ks=config.eval.recall_ks,
                    ndcg_ks=config.eval.ndcg_ks)


def recommend_saved(model_dir: Path, raw_users: list[str] | None, top_m: int, out: Path | None = None) -> pa.Table:
    """Top-`top_m` unseen items for the given raw user ids (all users if None).

    Returns (and with `out`, writes as Parquet, atomically) a table with columns user, rank, item,
    score, item_text — raw ids, best first; users with fewer unseen items get fewer rows.
    """
    config, parts, engine = load_saved(model_dir)
    dataset = parts.dataset
    if raw_users:
        index = {raw: i for i, raw in enumerate(dataset.user_raw)}
        unknown = [u for u in raw_users if u not in index]
        if unknown:
            raise DataPrepError(f"unknown user id(s) {unknown[:5]} (dataset {dataset.name} has {dataset.n_users} users)")
        users = np.array([index[u] for u in raw_users], dtype=np.int64)
    else:
        users = np.arange(dataset.n_users)
    items, scores = recommend(engine, parts.corpora, users, top_m, prompt=_prompt(config), seed=config.seed,
                              batch_size=config.eval.batch_size)
    valid = np.isfinite(scores)
    rows, ranks = np.nonzero(valid)
    picked = items[rows, ranks]
    table = pa.table({
        "user": pa.array([dataset.user_raw[u] for u in users[rows]], pa.string()),
        "rank": pa.array(ranks + 1, pa.int32()),
        "item": pa.array([dataset.item_raw[j] for j in picked], pa.string()),
        "score": pa.array(scores[rows, ranks], pa.float32()),
        "item_text": pa.array([dataset.item_text[j] for j in picked], pa.string()),
    })
    if out is not None:
        with atomic_file(out) as tmp:
            pq.write_table(table, tmp)
    return table
