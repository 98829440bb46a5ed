"""Export a saved model's user and item embeddings (collaborative and content) for downstream models
(CLLM4Rec-Emb): `embeddings.safetensors` (the four ID tables as saved) and `users.parquet` /
`items.parquet` (raw id, `collab` and `content` vectors as fixed-size float32 lists; items also `text`),
written as one folder, whole or not at all."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from cllm4rec.interactions import UserItems

from data_prep.atomic import atomic_folder
from data_prep.processed import ProcessedDataset, load_processed
from trainer import checkpoint as ckpt
from trainer.build import resolve_dataset
from trainer.config import EvalConfig, TrainConfig
from trainer.data import user_item_lists
from trainer.serving import UnknownIdError, saved_config


def _vectors(table: np.ndarray) -> pa.FixedSizeListArray:
    """Rows of a [N, K] float32 array as a fixed_size_list<float32>[K] column."""
    return pa.FixedSizeListArray.from_arrays(pa.array(table.reshape(-1), pa.float32()), table.shape[1])


def load_tables_and_dataset(model_dir: Path) -> tuple[dict, TrainConfig, ProcessedDataset]:
    """(fp32 tables, config, processed dataset) of a saved model — without its backbone."""
    saved = ckpt.load_model(Path(model_dir))
    config = saved_config(saved)
    dataset = load_processed(resolve_dataset(config.data.dataset, config.data.split_seed))
    return {name: t.float().contiguous() for name, t in saved.tables.items()}, config, dataset


def export_embeddings(model_dir: Path, out: Path) -> Path:
    """Write the embeddings folder of the saved model `model_dir` to `out`; returns `out`."""
    tables, _, dataset = load_tables_and_dataset(model_dir)
    for kind, count in (("user", dataset.n_users), ("item", dataset.n_items)):
        rows = tables[f"collab_{kind}"].shape[0]
        if rows != count:
            raise UnknownIdError(f"{model_dir}: {rows} {kind} rows in the tables, {count} {kind}s in dataset "
                                 f"{dataset.name}: the model was not trained on this dataset")
    with atomic_folder(Path(out)) as tmp:
        save_file(tables, str(tmp / "embeddings.safetensors"), metadata={"dataset": dataset.name})
        pq.write_table(pa.table({
            "user": pa.array(list(dataset.user_raw), pa.string()),
            "collab": _vectors(tables["collab_user"].numpy()),
            "content": _vectors(tables["content_user"].numpy()),
        }), tmp / "users.parquet")
        pq.write_table(pa.table({
            "item": pa.array(list(dataset.item_raw), pa.string()),
            "collab": _vectors(tables["collab_item"].numpy()),
            "content": _vectors(tables["content_item"].numpy()),
            "text": pa.array(list(dataset.item_text), pa.string()),
        }), tmp / "items.parquet")
    return Path(out)


def dataset_splits(dataset: ProcessedDataset) -> tuple[UserItems, UserItems, UserItems]:
    """(train, validation, test) items per user of a processed dataset."""
    return tuple(user_item_lists(dataset, split) for split in ("train", "val", "test"))


def two_tower_rows(tables: dict[str, torch.Tensor], splits: tuple[UserItems, UserItems, UserItems], eval_cfg: EvalConfig,
                   *, epochs: int = 30, batch_size: int = 1024, seed: int = 0, progress: bool = True
                   ) -> dict[str, dict[str, float]]:
    """{'CLLM4Rec-Emb': test metrics, 'Two-Tower': test metrics}: two towers over a saved model's user and
    item embeddings (`tables`, collaborative and content concatenated), and over learned IDs only, trained
    on the training split, selected on validation NDCG@100, scored on test with `eval_cfg`'s metrics (each
    row also holds its `best_epoch` and `seconds`)."""
    from cllm4rec.baselines.two_tower import train_two_tower
    from cllm4rec.metrics import evaluate_scores

    train, val, test = splits
    features = {"user": torch.cat([tables["collab_user"], tables["content_user"]], dim=1),
                "item": torch.cat([tables["collab_item"], tables["content_item"]], dim=1)}
    rows: dict[str, dict[str, float]] = {}
    for name, users, items in (("CLLM4Rec-Emb", features["user"], features["item"]), ("Two-Tower", None, None)):
        start = time.perf_counter()
        model, history = train_two_tower(train, val, user_features=users, item_features=items, epochs=epochs,
                                         batch_size=batch_size, seed=seed, progress=progress)
        metrics = evaluate_scores(model.score_all, train, test, tuple(eval_cfg.recall_ks), tuple(eval_cfg.ndcg_ks))
        rows[name] = {**metrics, "best_epoch": float(history.best_epoch), "seconds": time.perf_counter() - start}
    return rows


def run_two_towers(model_dir: Path, out: Path, *, epochs: int = 30, batch_size: int = 1024, seed: int = 0,
                   progress: bool = True) -> str:
    """`two_tower_rows` of a saved model written as results.md / results.json in `out`; returns the Markdown table."""
    from trainer.results import write_results

    tables, config, dataset = load_tables_and_dataset(model_dir)
    rows = two_tower_rows(tables, dataset_splits(dataset), config.eval, epochs=epochs, batch_size=batch_size,
                          seed=seed, progress=progress)
    Path(out).mkdir(parents=True, exist_ok=True)
    return write_results(Path(out), rows, config.eval.columns(),
                         {"model": str(model_dir), "epochs": epochs, "batch_size": batch_size, "seed": seed})
