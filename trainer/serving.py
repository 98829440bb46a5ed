"""Use a saved model (<output_dir>/model): evaluate it, measure how user-specific its scores are,
recommend top-M unseen items per user, or package it as an MLflow pyfunc model for `mlflow models
serve` (`save_pyfunc`; the installed `trainer/pyfunc_model.py` loads it)."""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from cllm4rec.diagnostics import LogitMoments, hidden_user_variance, mean_pairwise_cosine
from cllm4rec.interactions import first_occurrences
from cllm4rec.model import CLLM4Rec
from cllm4rec.table_init import word_embedding_stats
from cllm4rec.tasks import TableSet
from cllm4rec.templates import ScoringPrompt
from data_prep.atomic import atomic_file, atomic_folder
from data_prep.errors import DataPrepError
from trainer import checkpoint as ckpt
from trainer.build import RunParts, build_run, load_weights
from trainer.config import TrainConfig
from trainer.config_loading import config_from_dict, override_serving
from trainer.engine import PlainEngine
from trainer.evaluate import evaluate, recommend, scoring_prompt
from trainer.data import Batch, Corpora, user_item_lists
from trainer.rest import RequestError, echo_ids


class UnknownIdError(RequestError):
    """A raw user or item id that the model's dataset does not have; the message names it (HTTP 400)."""


def saved_config(saved: ckpt.SavedModel) -> TrainConfig:
    """A saved model's config; a model folder that holds its own dataset (`ckpt.DATASET`: a fold-in's grown
    catalogue) reads that one instead of data.dataset, so it serves without the original dataset folder."""
    config = config_from_dict(saved.config)
    bundled = saved.path / ckpt.DATASET
    return replace(config, data=replace(config.data, dataset=str(bundled))) if bundled.is_dir() else config


def load_saved(model_dir: Path) -> tuple[TrainConfig, RunParts, PlainEngine]:
    """Rebuild the run of a saved model and load its tables; refuses a changed dataset or backbone."""
    saved = ckpt.load_model(Path(model_dir))
    config = saved_config(saved)
    parts = build_run(config)
    ckpt.check_identity(saved.identity, ckpt.identity_of(config, parts), own_config=True)
    load_weights(parts.model, saved.tables, saved.extra)
    engine = PlainEngine(parts.model, config.pretrain.lr, config.finetune.lr)
    return config, parts, engine


def evaluate_saved(model_dir: Path, split: str = "test") -> dict[str, float]:
    config, parts, engine = load_saved(model_dir)
    return evaluate(engine, parts.corpora, user_item_lists(parts.dataset, split), prompt=scoring_prompt(config),
                    seed=config.seed, batch_size=config.eval.batch_size, recall_ks=config.eval.recall_ks,
                    ndcg_ks=config.eval.ndcg_ks)


@torch.no_grad()
def last_hidden_and_logits(engine: PlainEngine, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states [B, K], item logits [B, J]) at each scoring prompt's last position, fp32, from one
    backbone pass: the logits are the ones evaluation ranks."""
    engine.set_train(False)
    batch = engine.to_device(batch)
    model = engine.model
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"], TableSet.COLLAB)
    return model.last_position(hidden, batch["lengths"]).float(), model.last_position_item_logits(hidden, batch["lengths"])


@torch.no_grad()
def user_states(engine: PlainEngine, corpora: Corpora, users: np.ndarray, *, prompt: ScoringPrompt, seed: int,
                batch_size: int, progress: bool) -> torch.Tensor:
    """float32 [len(users), K]: each user's last hidden state under the scoring prompt (their training
    items), from which the item logits are states @ collab_item.T (`last_hidden_and_logits`)."""
    states = []
    for start in tqdm(range(0, len(users), batch_size), desc="user states", disable=not progress, leave=False):
        batch = corpora.scoring_batch(users[start : start + batch_size], prompt, seed)
        states.append(last_hidden_and_logits(engine, batch)[0].cpu())
    return torch.cat(states) if states else torch.zeros(0, engine.model.dim)


def diagnose_saved(model_dir: Path, split: str = "val", max_users: int = 256,
                   history_caps: tuple[int, ...] = ()) -> dict[str, Any]:
    """User-specificity of a saved model's scoring pass (`cllm4rec/diagnostics.py`) over the first
    `max_users` users (by index) with held-out items in `split`: hidden_user_variance,
    mean_pairwise_cosine, logit_user_share (raw logits) and n_users; with `history_caps`, also
    "history_caps": {cap: metrics of every user of `split` when each prompt keeps at most `cap` random
    training items} — how much of the history the model uses (cap 0: the user rows alone)."""
    config, parts, engine = load_saved(model_dir)
    heldout = user_item_lists(parts.dataset, split)
    users = np.flatnonzero(heldout.lengths() > 0)[:max_users]
    if len(users) < 2:
        raise DataPrepError(f"diagnose needs at least 2 users with {split} items, got {len(users)}")
    caps = {cap: evaluate(engine, parts.corpora, heldout, prompt=scoring_prompt(config), seed=config.seed,
                          batch_size=config.eval.batch_size, recall_ks=config.eval.recall_ks,
                          ndcg_ks=config.eval.ndcg_ks, desc=f"history cap {cap}", max_history=cap)
            for cap in history_caps}
    hidden, moments = [], LogitMoments.zeros(parts.dataset.n_items)
    for start in range(0, len(users), config.eval.batch_size):
        batch = parts.corpora.scoring_batch(users[start : start + config.eval.batch_size], scoring_prompt(config),
                                            config.seed)
        states, logits = last_hidden_and_logits(engine, batch)
        hidden.append(states.cpu())
        moments.update(logits)
    states = torch.cat(hidden)
    return {"hidden_user_variance": hidden_user_variance(states), "mean_pairwise_cosine": mean_pairwise_cosine(states),
            "logit_user_share": moments.user_share(), **row_norm_ratios(parts.model), "n_users": len(users),
            **({"history_caps": caps} if caps else {})}


def row_norm_ratios(model: CLLM4Rec) -> dict[str, float]:
    """{"user_row_norm_ratio", "item_row_norm_ratio"}: the mean norm of the collaborative user / item rows
    over the backbone's mean word-embedding norm. Far below 1, the frozen backbone reads the ID tokens as
    faint ones beside the prompt's words (docs/results.md, the content-signal dataset)."""
    _, word_norm = word_embedding_stats(model.backbone.get_input_embeddings())
    return {f"{kind}_row_norm_ratio": float(getattr(model, f"collab_{kind}").detach().float().norm(dim=1).mean() / word_norm)
            for kind in ("user", "item")}


@dataclass
class Recommender:
    """A saved model loaded once, answering top-M requests by raw user and item ids."""

    config: TrainConfig
    parts: RunParts
    engine: PlainEngine

    @classmethod
    def load(cls, model_dir: Path, serving: dict[str, Any] | None = None) -> "Recommender":
        """Verify and load a saved model folder, or the one inside a pyfunc model folder (never its
        MLmodel); `serving` overrides its request limits, e.g. {"max_records": 64}."""
        config, parts, engine = load_saved(model_folder(Path(model_dir)))
        return cls(replace(config, serving=override_serving(config.serving, serving or {})), parts, engine)

    @functools.cached_property
    def index(self) -> dict[str, dict[str, int]]:
        """Raw id → row, per kind ("user", "item"); built once, not per request."""
        dataset = self.parts.dataset
        return {kind: {raw: i for i, raw in enumerate(known)}
                for kind, known in (("user", dataset.user_raw), ("item", dataset.item_raw))}

    def _indices(self, raw: list[str], kind: str) -> np.ndarray:
        index = self.index[kind]
        unknown = [r for r in raw if r not in index]
        if unknown:
            raise UnknownIdError(f"unknown {kind} id(s) {echo_ids(list(dict.fromkeys(unknown)))}: not in dataset "
                                 f"{self.parts.dataset.name} ({len(index)} {kind}s)")
        return np.array([index[r] for r in raw], dtype=np.int64)

    def recommend(self, raw_users: list[str] | None, top_m: int, histories: list[list[str]] | None = None) -> pa.Table:
        """Top-`top_m` unseen items for the given raw user ids (all users if None or empty), in that order.

        histories: per user, raw item ids beyond the training data, oldest first; they follow the
        training items in the user's prompt (as the most recent) and are excluded from the answer.
        Returns a table with columns user, rank, item, score, item_text — raw ids, best first; users
        with fewer unseen items get fewer rows. Raises UnknownIdError naming any unknown user or item id.
        """
        dataset = self.parts.dataset
        if top_m < 1:
            raise DataPrepError(f"top_m must be >= 1, got {top_m}")
        users = self._indices(list(raw_users), "user") if raw_users else np.arange(dataset.n_users)
        items_of = None
        if histories is not None:
            if len(histories) != len(users):
                raise DataPrepError(f"{len(histories)} histories for {len(users)} users")
            train = self.parts.corpora.train
            items_of = [first_occurrences(np.concatenate([train.row(int(u)), self._indices(list(h), "item")]))
                        for u, h in zip(users, histories)]
        items, scores = recommend(self.engine, self.parts.corpora, users, top_m, prompt=scoring_prompt(self.config),
                                  seed=self.config.seed, batch_size=self.config.eval.batch_size, histories=items_of)
        rows, ranks = np.nonzero(np.isfinite(scores))
        picked = items[rows, ranks]
        return pa.table({
            "user": pa.array([dataset.user_raw[u] for u in users[rows]], pa.string()),
            "rank": pa.array(ranks + 1, pa.int32()),
            "item": pa.array([dataset.item_raw[j] for j in picked], pa.string()),
            "score": pa.array(scores[rows, ranks], pa.float32()),
            "item_text": pa.array([dataset.item_text[j] for j in picked], pa.string()),
        })


def recommend_saved(model_dir: Path, raw_users: list[str] | None, top_m: int, out: Path | None = None) -> pa.Table:
    """`Recommender.recommend` on a saved model; with `out`, also written as Parquet, atomically."""
    table = Recommender.load(model_dir).recommend(raw_users, top_m)
    if out is not None:
        with atomic_file(out) as tmp:
            pq.write_table(table, tmp)
    return table


def model_folder(path: Path) -> Path:
    """`path` if it is a saved model folder, else the one saved model folder inside pyfunc model folder
    `path` (data/<name>/, found by its COMPLETE; the MLmodel file is not read)."""
    inside = sorted(path.glob(f"data/*/{ckpt.COMPLETE}"))
    return inside[0].parent if not (path / ckpt.COMPLETE).is_file() and len(inside) == 1 else path


def pyfunc_signature(top_m: int):
    """Request: user (str), optional history (list of str); answer rows; param top_m (int, default `top_m`)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    # history: AnyType, checked by the model itself: MLflow's Array check refuses the NaN that pandas puts in
    # records without a history when others in the same request have one
    inputs = Schema([ColSpec("string", "user"), ColSpec(AnyType(), "history", required=False)])
    outputs = Schema([ColSpec("string", "user"), ColSpec("integer", "rank"), ColSpec("string", "item"),
                      ColSpec("float", "score"), ColSpec("string", "item_text")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("top_m", "long", top_m)]))


def save_pyfunc(model_dir: Path, out: Path) -> Path:
    """Write the MLflow pyfunc model of a verified saved model to `out` (whole or not at all): a copy of
    the model folder as its data (data/<its name>/: safetensors, YAML, JSON, COMPLETE), no code. Its MLmodel
    names the installed module `trainer.pyfunc_model` as the loader, and states the request limits
    (config section `serving`) as model_config. Serve it with `mlflow models serve -m OUT --env-manager local`."""
    import importlib.metadata

    import mlflow

    serving = config_from_dict(ckpt.load_model(Path(model_dir)).config).serving
    with atomic_folder(Path(out)) as staging:
        staging.rmdir()  # mlflow writes the folder itself; atomic_folder then moves it into place
        mlflow.pyfunc.save_model(
            path=str(staging), loader_module="trainer.pyfunc_model", data_path=str(Path(model_dir).resolve()),
            model_config=asdict(serving), signature=pyfunc_signature(serving.top_m),
            pip_requirements=[f"cllm4rec=={importlib.metadata.version('cllm4rec')}", f"mlflow=={mlflow.__version__}",
                              f"torch=={torch.__version__.split('+')[0]}"],
        )
    return Path(out)
