"""`cllm4rec evaluate --cold-start` (docs/fold_in.md, section 5): how well a model trained on a cold-start
split (`data_prep/cold_start.py`) ranks for the held-out items or users once they are folded in.

1. The held-out items (from their texts) or users (from their biographies and 1-3 first interactions,
   with those interactions' reviews where the split holds them) are folded into the model (`trainer/fold_in.py`; its own folder `<out>/model`).
2. Held-out items: for every user of the model with interactions on them, two rankings: the held-out
   items only, and the whole catalogue with them included. Held-out users: each one's ranking of the
   whole catalogue. Training items (a new user's history) are excluded; Recall@k and NDCG@k over the
   held-out interactions (`cllm4rec/metrics.py`).
3. Rows (`trainer/cold_start_scoring.py`): random scores; MostPop (held-out users); TF-IDF and
   mean-word-embedding profiles of the user's history texts; the fold-in with the new rows'
   collaborative embeddings left random; the fold-in.
4. The table is printed by the CLI, written to `<out>/results.md` and `<out>/results.json`, and logged to
   MLflow as a run `<name>-cold-start` (metrics `<setting>/<row>/<metric>`, the two files as artifacts).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep.cold_start import HISTORY, TEXTS, HeldOut, read_heldout
from data_prep.readers.generic_spec import InteractionTableSpec, ReviewTableSpec, TextTableSpec
from data_prep.readers.new_entities import read_new_entities
from trainer import checkpoint as ckpt
from trainer.build import resolve_dataset
from trainer.cold_start_scoring import ROW_KEYS, SETTINGS, score_rows, settings_of
from trainer.config import ConfigError, TrainConfig
from trainer.fold_in import FoldInOptions, FoldInResult, fold_in
from trainer.results import markdown_table, write_results
from trainer.serving import load_saved, saved_config
from trainer.tracking import Tracker

FOLDED = "model"


@dataclass(frozen=True)
class ColdStartOptions:
    """k: the metrics' cut-off; fold_in: the fold-in's options (passes, alignment, ...); reviews: fold held-out
    users in with the reviews of their history interactions, where the split holds them; seed: of the random
    scores and the random collaborative rows; max_users: only the first N users with targets (smoke runs);
    mlflow: log the results to the model's tracking store."""

    k: int = 20
    fold_in: FoldInOptions = field(default_factory=FoldInOptions)
    reviews: bool = True
    seed: int = 0
    max_users: int | None = None
    mlflow: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.k < 1 or (self.max_users is not None and self.max_users < 1):
            raise ConfigError(f"cold-start: need k >= 1 and max_users >= 1; got k={self.k}, max_users={self.max_users}")

    def columns(self, kind: str) -> list[str]:
        """The table's columns for a split of `kind`: 'held-out recall@k', 'held-out ndcg@k', 'catalogue
        recall@k', 'catalogue ndcg@k' (held-out users: the last two)."""
        return [f"{setting} {metric}@{self.k}" for setting in settings_of(kind) for metric in ("recall", "ndcg")]


def default_out(model_dir: Path) -> Path:
    """`cold-start` beside the model folder (runs/<name>/cold-start for runs/<name>/model)."""
    return Path(model_dir).resolve().parent / "cold-start"


def fold_heldout(model_dir: Path, out: Path, options: FoldInOptions, reviews: bool = True) -> tuple[HeldOut,
                                                                                                  FoldInResult]:
    """Fold the held-out items or users of the cold-start split `model_dir` was trained on into it, as model
    folder `out`, from the split's files (items: their texts; users: biographies and histories, with
    `reviews` the history's reviews where the split holds them); (the held-out part, the fold-in's result)."""
    config = saved_config(ckpt.load_model(Path(model_dir)))
    held = read_heldout(resolve_dataset(config.data.dataset, config.data.split_seed))
    texts = TextTableSpec(held.path / TEXTS[held.kind], held.kind.removesuffix("s"), ("text",))
    if held.kind == "items":
        return held, fold_in(Path(model_dir), read_new_entities(items=texts), out, options)
    history = held.path / HISTORY
    new = read_new_entities(users=texts, interactions=InteractionTableSpec(history, "user", "item", "timestamp"),
                            reviews=ReviewTableSpec(history, "user", "item", "review")
                            if reviews and held.history_reviews else None)
    return held, fold_in(Path(model_dir), new, out, options)


def evaluate_cold_start(model_dir: Path, out: Path, options: ColdStartOptions = ColdStartOptions()) -> dict[str, Any]:
    """Fold the held-out items or users of the model's cold-start split into `model_dir`, score every row, write
    `out`/results.{md,json} and log them; returns results.json's content (module docstring)."""
    start = time.perf_counter()
    held, folded = fold_heldout(Path(model_dir), Path(out) / FOLDED, options.fold_in, options.reviews)
    config, parts, engine = load_saved(Path(out) / FOLDED)
    scored = score_rows(config, parts, engine, held, k=options.k, seed=options.seed, max_users=options.max_users,
                        progress=options.progress)
    columns = options.columns(held.kind)
    in_model = parts.dataset.n_items if held.kind == "items" else parts.dataset.n_users
    report = {"model": str(Path(model_dir).resolve()), "folded_model": str((Path(out) / FOLDED).resolve()),
              "dataset": str(held.path), "cold_start": held.info, "k": options.k, "columns": columns,
              "rows": list(scored.rows), "settings": {s: SETTINGS[s] for s in settings_of(held.kind)},
              "users_evaluated": scored.users, "users_not_in_model": scored.users_not_in_model,
              "targets": scored.targets,
              "heldout": {"kind": held.kind, "model": in_model - len(held.texts), "new": len(held.texts)},
              "fold_in": {"alignment": folded.alignment, "user_alignment": folded.user_alignment,
                          "reviews": folded.added["reviews"], "content_loss": folded.content_loss,
                          "collab_loss": folded.collab_loss, "seconds": folded.seconds},
              "options": {"k": options.k, "seed": options.seed, "max_users": options.max_users, "reviews": options.reviews,
                          "passes": options.fold_in.passes, "history_passes": options.fold_in.history_passes,
                          "lr": options.fold_in.lr, "align": options.fold_in.align,
                          "align_users": options.fold_in.align_users, "align_features": options.fold_in.align_features},
              "seconds": time.perf_counter() - start}
    write_results(Path(out), scored.rows, columns, report)
    _log(report, scored.rows, Path(out), Path(model_dir), config, options.mlflow)
    return {"models": scored.rows, **report}


def _log(report: dict[str, Any], rows: dict[str, dict[str, float]], out: Path, model_dir: Path, config: TrainConfig,
         enabled: bool) -> None:
    """An MLflow run `<name>-cold-start` in the model's tracking store (its tracking_uri, else
    $MLFLOW_TRACKING_URI, else mlflow.db two folders above the model, where training put it): the options
    as params, every cell as `<setting>/<row>/<metric>`, results.md and results.json as artifacts."""
    tracking, store = config.tracking, model_dir.resolve().parent.parent / "mlflow.db"
    with Tracker(enabled, tracking.tracking_uri, tracking.experiment, store) as tracker:
        tracker.start(f"{config.name}-cold-start", {"model": report["model"], "dataset": report["dataset"],
                                                    "cold_start": report["cold_start"], **report["options"]},
                      tags={"cold_start": config.name})
        tracker.log_metrics({f"{column.split(' ')[0]}/{ROW_KEYS[name]}/{column.split(' ')[1]}": value
                             for name, metrics in rows.items() for column, value in metrics.items()}, parent=True)
        for name in ("results.md", "results.json"):
            tracker.log_artifact(out / name)


def table_markdown(report: dict[str, Any]) -> str:
    """The printed table: what was evaluated, then one row per model."""
    info = report["cold_start"]
    header = (f"cold start: {info['heldout']} held-out {info['kind']} ({info['fraction']:.0%} of "
              f"{info['source']['name']}, seed {info['seed']}), {report['users_evaluated']} users, "
              f"{report['targets']} interactions; k = {report['k']}\n\n")
    return header + markdown_table({name: report["models"][name] for name in report["rows"]}, report["columns"])
