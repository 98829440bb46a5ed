"""Fold new users and items into a trained model without retraining it (`cllm4rec fold-in`, docs/fold_in.md).

1. The model's dataset grows by the new ids (`trainer/catalogue.py`), and the ID token ranges with it
   (users V..V+N'-1, then items: cllm4rec/tokenization.py). Every new row starts at the centroid (the
   mean) of the old rows of its table; for a model built with `model.content_init_from_text`, a new
   entity with text starts both its rows at its text's mean word embedding, as the build started the
   old content rows (`start_from_text`).
2. With `align` `moments`, `ridge` (the default) or `rank`, each new item with text starts its collaborative
   row at the image of its text under a map fitted on the old items, with its logits on the old items' scale
   (`align_new_items`, `trainer/alignment.py`; `rank` fits the map by the model's own ranking of some old
   users' training items). With `align_users` `moments` or `ridge`,
   each new user with a training item that has text starts the same way from the mean of those items'
   features, under a map fitted on the old users (`align_new_users`).
3. The content LLM reads the new entities' own texts (biographies, item texts) for `passes` epochs of
   task `content`, the model's C-step: MR pulls each content row toward its collaborative row (where
   it started). Only the new content rows move (every old row's gradient is zeroed before each Adam
   step, so Adam leaves it bit-identical).
4. Every other new collaborative row (users and items step 2 did not place) is set to the mean of its
   MR prior N(z^c, λ_c⁻¹I): its content row — or, where the model's warm-up set that table's
   collaborative rows to token-like copies of the content rows (`pretrain.collab_from_content` with
   `collab_from_content_token_alpha`), the same token-like copy of it, centred on the old content rows'
   mean, so that a new row starts where the trained rows of its table started (`prior_means`).
5. New users with interactions: `history_passes` epochs of the finetuning objective (task `rec`, masked
   prompts as in finetuning; the collaborative LLM, task `collab`, for a model trained without
   finetuning) over their histories, with the model's MR toward their content rows. Only the new
   users' collaborative rows move; new items keep where steps 2-4 put them.
6. The new model folder, written whole: the grown tables, the config, the identity of the grown
   dataset, the grown dataset itself (`ckpt.DATASET`, so serving needs no other dataset folder), and
   `fold_in.json` (what was added, the options, the alignment, the loss of every pass, seconds); then its
   pyfunc.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cllm4rec.baselines.content import tfidf_lsa
from cllm4rec.interactions import UserItems
from cllm4rec.model import CLLM4Rec
from cllm4rec.table_init import mean_word_embedding, token_like_rows
from cllm4rec.zero_params import first_row, is_row_slice
from data_prep.atomic import atomic_folder
from data_prep.processed import dataset_hash, load_processed, write_processed
from data_prep.readers.new_entities import NewEntities
from trainer import checkpoint as ckpt
from trainer.alignment import AffineMap, CannotAlign, fit_alignment, fit_rank_map
from trainer.build import build_run, load_weights, resolve_dataset, text_init_ids
from trainer.catalogue import grow_dataset
from trainer.config import ALIGN_FEATURES, ALIGNMENTS, ITEM_ALIGNMENTS, ConfigError, TrainConfig, config_to_dict
from trainer.data import Corpora, EpochStream, epoch_rng
from trainer.distributed import LOCAL, Dist
from trainer.engine import PlainEngine
from trainer.evaluate import scoring_prompt
from trainer.loop import run_epoch
from trainer.phases import StepKind
from trainer.rows_engine import RowShardedEngine
from trainer.schedule import PLANNED_STEPS, StepPlan, step_plans
from trainer.serving import save_pyfunc, saved_config, user_states

REPORT = "fold_in.json"
CALIBRATION_USERS = 256
"""At most this many old users' scoring states scale an alignment (drawn with the fold-in's seed)."""
RANK_USERS = 2048
"""At most this many old users' scoring states and training items fit and scale a `rank` map (`fit_rank_map`)."""


@dataclass(frozen=True)
class FoldInOptions:
    """passes: C-step epochs over the new entities' texts; history_passes: epochs over the new users'
    histories; lr: Adam's rate for the new rows (None: each step at the model's own base rate, its
    `pretrain` lr for C-steps and `finetune` lr for the histories' finetuning steps); batch_size: documents per step (None: the model's
    pretrain.batch_size); seed: batch order and the users that scale an alignment; align / align_users:
    where new items / users start their collaborative rows (ITEM_ALIGNMENTS / ALIGNMENTS, `align_new_items`,
    `align_new_users`);
    align_features: what their maps read of an item's text (ALIGN_FEATURES, `text_features`)."""

    passes: int = 0
    history_passes: int = 5
    lr: float | None = None
    batch_size: int | None = None
    seed: int = 0
    align: str = "ridge"
    align_users: str = "none"
    align_features: str = "tfidf"
    progress: bool = True

    def __post_init__(self) -> None:
        if (min(self.passes, self.history_passes) < 0 or (self.lr is not None and not self.lr > 0)
                or (self.batch_size is not None and self.batch_size < 1)):
            raise ConfigError(f"fold-in: need passes >= 0, history passes >= 0, lr > 0 and batch_size >= 1; got "
                              f"passes={self.passes}, history_passes={self.history_passes}, lr={self.lr}, "
                              f"batch_size={self.batch_size}")
        for name, value, allowed in (("align", self.align, ITEM_ALIGNMENTS), ("align_users", self.align_users, ALIGNMENTS),
                                     ("align_features", self.align_features, ALIGN_FEATURES)):
            if value not in allowed:
                raise ConfigError(f"fold-in: {name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.align_features == "tfidf" and "moments" in (self.align, self.align_users):
            raise ConfigError("fold-in: align_features=tfidf needs ridge maps: moments adds a feature to a row of "
                              "the same width (K), and a TF-IDF vector is not one; use align=ridge (align_users "
                              "ridge or none)")


@dataclass
class FoldInResult:
    """What `fold_in` wrote and measured; `content_loss` / `collab_loss`: the mean LM loss of each pass;
    `seconds`: of each stage (setup, align, content, collab, write, pyfunc); `alignment` / `user_alignment`:
    `align_new_items`' / `align_new_users`' report."""

    out: Path
    added: dict[str, int]
    alignment: dict[str, Any] = field(default_factory=dict)
    user_alignment: dict[str, Any] = field(default_factory=dict)
    content_loss: list[float] = field(default_factory=list)
    collab_loss: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    pyfunc: Path | None = None


def mapped_tables(tables: dict[str, torch.Tensor], users: np.ndarray, items: np.ndarray) -> dict[str, torch.Tensor]:
    """The [N', K] / [J', K] tables whose row r is row users[r] / items[r] of each earlier [N, K] / [J, K]
    table (an exact copy), or, where that is -1 (a new id), the centroid (the mean) of the earlier rows."""
    mapped = {}
    for name, table in tables.items():
        rows = torch.as_tensor(users if name.endswith("user") else items, dtype=torch.long)
        out = table.mean(dim=0, keepdim=True).expand(rows.shape[0], -1).clone()
        kept = rows >= 0
        out[kept] = table[rows[kept]]
        mapped[name] = out
    return mapped


def grown_rows(n_old: int, n_new: int) -> np.ndarray:
    """The rows of a catalogue grown from n_old to n_new ids: 0..n_old-1, then -1 (new) for each added id."""
    return np.concatenate([np.arange(n_old), np.full(n_new - n_old, -1)])


def freeze_rows(optimizer: torch.optim.Optimizer, trainable: dict[torch.nn.Parameter, torch.Tensor]) -> None:
    """Before every step, zero the gradient rows of each parameter outside its trainable rows (`trainable`:
    a bool [rows] mask per parameter; a parameter not in it is frozen whole): Adam's moments of those rows
    stay 0, and so does their update, so they stay bit-identical."""
    def zero_frozen_rows(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group in opt.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    rows = trainable.get(param)
                    param.grad[slice(None) if rows is None else ~rows] = 0

    optimizer.register_step_pre_hook(zero_frozen_rows)


def fold_in_plans(config: TrainConfig, lr: float | None) -> dict[StepKind, StepPlan]:
    """The model's own steps (C-step, L-step, finetuning: their MR and prior weights) at a constant `lr` (None:
    each at its own base rate)."""
    plans = step_plans(config, dict.fromkeys(PLANNED_STEPS, 1))
    return {step: replace(plans[step], lr=plans[step].lr if lr is None else lr, lr_schedule="constant",
                          warmup_steps=0) for step in PLANNED_STEPS}


def histories_of(train: UserItems, users: np.ndarray) -> UserItems:
    """The training items of the users where `users` (bool [N]) is true; the other rows empty."""
    lengths = train.lengths()
    indptr = np.concatenate([[0], np.cumsum(np.where(users, lengths, 0))])
    return UserItems(indptr, train.indices[np.repeat(users, lengths)], train.n_items)


def new_corpora(corpora: Corpora, new_users: np.ndarray, new_items: np.ndarray) -> Corpora:
    """`corpora` cut to what the new entities (bool [N] / [J] masks) own, in memory: the content documents
    that name a new user or item (biographies, item texts, reviews), and the new users' training items."""
    mine = [k for k, (_, user, item) in enumerate(corpora.content_owner)
            if (user >= 0 and new_users[user]) or (item >= 0 and new_items[item])]
    return replace(corpora, content=[corpora.content[k] for k in mine], shards=None,
                   content_owner=[corpora.content_owner[k] for k in mine], train=histories_of(corpora.train, new_users))


def held_mask(table: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """The part of the bool mask [rows of the whole table] over the rows `table` holds (all of a whole table,
    a rank's rows of a `RowSlices` build), as a tensor on its device."""
    lo = first_row(table)
    return torch.as_tensor(mask[lo:lo + table.shape[0]], device=table.device)


def row_masks(model: CLLM4Rec, users: np.ndarray, items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The bool [N] / [J] row masks `users` / `items` over the rows the model's tables hold (`held_mask`)."""
    return held_mask(model.collab_user, users), held_mask(model.collab_item, items)


def start_from_text(model: CLLM4Rec, config: TrainConfig, corpora: Corpora, new_users: np.ndarray,
                    new_items: np.ndarray) -> None:
    """Step 1's text rule: with `model.content_init_from_text`, each new entity (bool [N] / [J] masks) with
    text gets the content row the model's build gives it (`text_init_ids`, over the model's loaded word
    embeddings), and its collaborative row, the MR prior's mean, equal to it. Other rows stay as they are."""
    new = {"user": new_users, "item": new_items}
    texts = {(kind, index): ids for (kind, index), ids in text_init_ids(config.model, corpora).items()
             if ids and new[kind][index]}
    model.init_content_from_text(texts)
    with torch.no_grad():
        for kind, index in texts:
            collab, content = getattr(model, f"collab_{kind}"), getattr(model, f"content_{kind}")
            row = index - first_row(collab)  # where the table holds it (a rank's rows: maybe not)
            if 0 <= row < collab.shape[0]:
                collab[row] = content[row]


def fold_in_engine(model: CLLM4Rec, config: TrainConfig, lr: float | None, new_users: np.ndarray,
                   new_items: np.ndarray, dist: Dist = LOCAL) -> PlainEngine:
    """A plain engine over `model` (the row-sharded engine over `dist` when its tables are a rank's rows) with
    the model's own steps at a constant `lr` (None: their own rates; `fold_in_plans`), in which only the new rows (bool [N] / [J]
    masks) move: content rows of new users and items, collaborative rows of new users. The backbone must be
    frozen (requires_grad false) by the caller."""
    plans = fold_in_plans(config, lr)
    rates = (config.pretrain.lr, config.finetune.lr) if lr is None else (lr, lr)
    if is_row_slice(model.collab_user):
        engine: PlainEngine = RowShardedEngine(model, *rates, dist=dist, plans=plans)
    else:
        engine = PlainEngine(model, *rates, plans=plans)
    users, items = row_masks(model, new_users, new_items)
    freeze_rows(engine.optimizer, {model.content_user: users, model.content_item: items, model.collab_user: users})
    return engine


def text_features(model: CLLM4Rec, corpora: Corpora, features: str = "words", seed: int = 0) -> tuple[np.ndarray,
                                                                                                      torch.Tensor]:
    """(the items with text [n], float32 [n, D] on the CPU): of each one's own text, no reviews, `features`
    "words": the mean input word embedding (D = K; where the text rule starts a new item, `start_from_text`);
    "tfidf": its TF-IDF vector over the texts of these n items, reduced to D ≤ K dimensions by latent semantic
    analysis (`tfidf_lsa`, seeded with `seed`): the words a practitioner's content baseline matches."""
    texts = sorted((index, ids) for (kind, index), ids in corpora.entity_text_ids().items() if kind == "item" and ids)
    items = np.array([index for index, _ in texts], dtype=np.int64)
    if not texts:
        return items, torch.zeros(0, model.dim)
    if features == "tfidf":
        decoded = [corpora.tokenizer.tokenizer.decode(ids) for _, ids in texts]
        return items, torch.from_numpy(tfidf_lsa(decoded, model.dim, seed))
    words = model.backbone.get_input_embeddings()
    return items, torch.stack([mean_word_embedding(words, ids) for _, ids in texts]).cpu()


def history_features(train: UserItems, items: np.ndarray, features: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """(the users with a training item among `items` [n] (the items with text) [m], float32 [m, K]: the mean
    of those items' features [n, K], `text_features`: the profile of a user's history texts)."""
    position = np.full(train.n_items, -1, np.int64)
    position[items] = np.arange(len(items))
    owner = train.owners()
    rows = position[train.indices]
    owner, rows = owner[rows >= 0], rows[rows >= 0]
    sums = torch.zeros(train.n_users, features.shape[1]).index_add_(0, torch.from_numpy(owner), features[rows])
    counts = np.bincount(owner, minlength=train.n_users)
    users = np.flatnonzero(counts > 0)
    return users, sums[users] / torch.from_numpy(counts[users]).float()[:, None]


def calibration_users(train: UserItems, new_users: np.ndarray, new_items: np.ndarray, seed: int,
                      limit: int = CALIBRATION_USERS) -> np.ndarray:
    """Sorted: at most `limit` old users (bool [N] / [J] masks of the new ones) with training items, none of them
    new (their scoring prompts hold old rows only), drawn with `seed`."""
    owner = train.owners()
    touched = np.zeros(train.n_users, dtype=bool)
    touched[owner[new_items[train.indices]]] = True
    eligible = np.flatnonzero((train.lengths() > 0) & ~new_users & ~touched)
    picked = epoch_rng(seed, "fold-in", "align").choice(eligible, min(len(eligible), limit), replace=False)
    return np.sort(picked)


def align_rows(table: torch.nn.Parameter, owners: np.ndarray, features: torch.Tensor, new: np.ndarray, method: str,
               fit: Callable[[torch.Tensor, torch.Tensor], AffineMap], entity: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit `method`'s map (`fit`: the old owners' features, their rows → the map) from the features [n, K] of
    the old `owners` [n] (where `new` [n] is false) to their rows of `table`, and set the rows of the new owners
    to their features' images. Returns (bool [rows of table]: the rows set; the report: `method`, `<entity>s`
    set, `fitted_on`, `alpha`, `scale`, or `skipped`: why no map could be fitted, nothing then set)."""
    placed, report = np.zeros(table.shape[0], dtype=bool), {"method": method, f"{entity}s": 0}
    old_rows = table.detach()[torch.as_tensor(owners[~new], device=table.device)].float().cpu()
    try:
        fitted = fit(features[torch.from_numpy(~new)], old_rows)
    except CannotAlign as error:
        return placed, {**report, "skipped": str(error)}
    with torch.no_grad():
        table[torch.as_tensor(owners[new], device=table.device)] = fitted(features[torch.from_numpy(new)]).to(
            table.device, table.dtype)
    placed[owners[new]] = True
    return placed, {**report, f"{entity}s": int(new.sum()), "fitted_on": int((~new).sum()), "alpha": fitted.alpha,
                    "scale": fitted.scale}


def align_new_items(engine: PlainEngine, corpora: Corpora, config: TrainConfig, new_users: np.ndarray,
                    new_items: np.ndarray, method: str, seed: int, progress: bool,
                    features: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Step 2 of the module docstring (`trainer/alignment.py`): under `method` `moments`, `ridge` or `rank`,
    each new item with text (bool [J] mask `new_items`; `corpora`: all of the grown catalogue's) starts its
    collaborative row at its text feature's (`text_features` of kind `features`) image under the map fitted
    on the old items with text, over the scoring states of `calibration_users` (`rank`: at most RANK_USERS of
    them, and their training items). Returns (bool [J]: the rows set; the report for fold_in.json: `method`,
    `items` set, `fitted_on` old items, `users`, `alpha`, `scale`, or `skipped`: why no map could be
    fitted, its rows then left to step 4)."""
    nothing = np.zeros_like(new_items), {"method": method, "items": 0}
    if method == "none":
        return nothing
    items, vectors = text_features(engine.model, corpora, features, seed)
    new = new_items[items]
    if not new.any():
        return nothing
    users = calibration_users(corpora.train, new_users, new_items, seed, RANK_USERS if method == "rank" else
                              CALIBRATION_USERS)
    states = user_states(engine, corpora, users, prompt=scoring_prompt(config), seed=config.seed,
                         batch_size=config.eval.batch_size, progress=progress)

    def fit(old: torch.Tensor, rows: torch.Tensor) -> AffineMap:
        if method != "rank":
            return fit_alignment(method, old, rows, states, "item")
        targets = corpora.train.to_dense(users)[:, torch.from_numpy(items[~new])]
        return fit_rank_map(old, rows, states, targets, seed, progress)

    aligned, report = align_rows(engine.model.collab_item, items, vectors, new, method, fit, "item")
    return aligned, report if "skipped" in report else {**report, "users": states.shape[0]}


def align_new_users(model: CLLM4Rec, corpora: Corpora, new_users: np.ndarray, method: str, features: str,
                    seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Step 2 for users: under `method` `moments` or `ridge`, each new user (bool [N] mask `new_users`; `corpora`:
    all of the grown catalogue's) with a training item that has text starts their collaborative row at the
    image of their history feature (`history_features` over `text_features` of kind `features`) under the map
    fitted on the old users, scaled to the old rows' spread (a user row is read by the backbone, not by a dot
    product). Returns (bool [N]: the rows set; the report for fold_in.json: `method`, `users` set, `fitted_on` old users, `alpha`, `scale`, or
    `skipped`)."""
    nothing = np.zeros_like(new_users), {"method": method, "users": 0}
    if method == "none":
        return nothing
    users, vectors = history_features(corpora.train, *text_features(model, corpora, features, seed))
    new = new_users[users]
    if not new.any():
        return nothing
    return align_rows(model.collab_user, users, vectors, new, method,
                      lambda old, rows: fit_alignment(method, old, rows, None, "user"), "user")


def prior_means(engine: PlainEngine, config: TrainConfig, kind: str, new: torch.Tensor) -> torch.Tensor:
    """Step 4's collaborative rows [n, K] for the new rows `new` (bool mask over the rows the engine's model
    holds) of the `kind` ("user" / "item") tables: their content rows, or token-like copies of them (centred on
    the old content rows' mean, over every rank's) where the model's warm-up made its collaborative rows of
    that kind so (`pretrain.collab_from_content` with `collab_from_content_token_alpha`). Collective with
    row-sharded tables: every rank calls it, with or without new rows."""
    model, pre = engine.model, config.pretrain
    content = getattr(model, f"content_{kind}")
    if kind not in pre.collab_copied_kinds() or pre.collab_from_content_token_alpha is None:
        return content[new]
    words = model.backbone.get_input_embeddings()
    return token_like_rows(content[new], words, pre.collab_from_content_token_alpha,
                           engine.column_mean(content[~new].detach().float())).to(content.dtype)


def read_new_texts(engine: PlainEngine, corpora: Corpora, config: TrainConfig, options: FoldInOptions, batch: int,
                   new_users: np.ndarray, new_items: np.ndarray) -> list[float]:
    """Steps 3-4 of the module docstring: `options.passes` content epochs over `corpora` (`new_corpora`), then
    each collaborative row of `new_users` / `new_items` (bool [N] / [J]: the new rows step 2 did not place)
    set to its content row, the mean of its MR prior, in the form the model's warm-up gave its trained rows
    (`prior_means`); the loss of each pass."""
    step = StepKind.C_STEP
    streams = [corpora.content_batches(epoch_rng(options.seed, "fold-in", step.task, p), batch, engine.dist)
               for p in range(options.passes)]
    losses = _passes(engine, step, streams, options.progress) if corpora.content else []
    model = engine.model
    users, items = row_masks(model, new_users, new_items)
    with torch.no_grad():
        for kind, new in (("user", users), ("item", items)):
            means = prior_means(engine, config, kind, new)
            if new.any():
                getattr(model, f"collab_{kind}")[new] = means
    return losses


def _passes(engine: PlainEngine, step: StepKind, streams: list[EpochStream], progress: bool) -> list[float]:
    """Train one epoch of `step`s per stream; the mean LM loss of each."""
    return [run_epoch(engine, step, stream, total=stream.steps, max_steps=None, progress=progress,
                      desc=f"fold-in {step.task} {index + 1}/{len(streams)}")["lm_loss"]
            for index, stream in enumerate(streams)]


def _collab_passes(engine: PlainEngine, corpora: Corpora, config: TrainConfig, options: FoldInOptions,
                   batch: int) -> list[float]:
    """The new users' passes: the finetuning objective (masked prompts), or the collaborative LLM for a
    model trained without finetuning."""
    fine = config.finetune
    step = StepKind.FINETUNE if fine.enabled else StepKind.L_STEP

    def stream(index: int) -> EpochStream:
        rng = epoch_rng(options.seed, "fold-in", step.task, index)
        if fine.enabled:
            return corpora.finetune_batches(rng, batch, mode=fine.mask_mode, ratio=fine.mask_ratio, target=fine.target)
        return corpora.collab_batches(rng, batch, reorder=config.pretrain.reorder)

    return _passes(engine, step, [stream(p) for p in range(options.history_passes)], options.progress)


def fold_in(model_dir: Path, new: NewEntities, out: Path, options: FoldInOptions = FoldInOptions(),
            pyfunc: Path | None = None) -> FoldInResult:
    """Write a model folder `out` that is the saved model `model_dir` plus `new` (module docstring); with
    `pyfunc`, also its MLflow pyfunc model there."""
    start = time.perf_counter()

    def lap(name: str) -> None:
        result.seconds[name] = time.perf_counter() - start - sum(result.seconds.values())

    saved = ckpt.load_model(Path(model_dir))
    config = saved_config(saved)
    old_path = resolve_dataset(config.data.dataset, config.data.split_seed)
    old = load_processed(old_path)
    grown = grow_dataset(old, new)
    result = FoldInResult(Path(out), {key: grown.stats[f"fold_in_{key}"]
                                      for key in ("users", "items", "interactions", "reviews")})
    # the new folder reads its own dataset; shards of the old one no longer match it
    written = replace(config, data=replace(config.data, dataset=str(Path(out).resolve() / ckpt.DATASET), shards=None))
    with atomic_folder(Path(out)) as tmp:
        write_processed(grown, tmp / ckpt.DATASET, old.meta["templates"]["prompts"])
        parts = build_run(replace(written, data=replace(written.data, dataset=str(tmp / ckpt.DATASET))))
        ckpt.check_identity(saved.identity, {**ckpt.identity_of(config, parts), "dataset_hash": dataset_hash(old_path),
                                             "n_users": old.n_users, "n_items": old.n_items}, own_config=True)
        model = parts.model
        new_users, new_items = np.arange(grown.n_users) >= old.n_users, np.arange(grown.n_items) >= old.n_items
        load_weights(model, mapped_tables(saved.tables, grown_rows(old.n_users, grown.n_users),
                                          grown_rows(old.n_items, grown.n_items)), saved.extra)
        corpora = new_corpora(parts.corpora, new_users, new_items)
        start_from_text(model, config, corpora, new_users, new_items)
        model.backbone.requires_grad_(False)  # trained backbone or LoRA weights stay as they are
        engine = fold_in_engine(model, config, options.lr, new_users, new_items)
        batch = options.batch_size or config.pretrain.batch_size
        lap("setup")
        aligned, result.alignment = align_new_items(engine, parts.corpora, config, new_users, new_items, options.align,
                                                    options.seed, options.progress, options.align_features)
        placed, result.user_alignment = align_new_users(model, parts.corpora, new_users, options.align_users,
                                                        options.align_features, options.seed)
        lap("align")
        result.content_loss = read_new_texts(engine, corpora, config, options, batch, new_users & ~placed,
                                             new_items & ~aligned)
        lap("content")
        if corpora.train.nnz:
            result.collab_loss = _collab_passes(engine, corpora, config, options, batch)
        lap("collab")
        _write_report(tmp / REPORT, Path(model_dir), saved.identity, options, result)
        ckpt.write_model_files(tmp, engine.full_tables(), config_to_dict(written), ckpt.identity_of(written, parts),
                               extra_tensors=saved.extra or None)
    lap("write")
    if pyfunc is not None:
        result.pyfunc = save_pyfunc(Path(out), Path(pyfunc))
        lap("pyfunc")
    return result


def _write_report(path: Path, model_dir: Path, source_identity: dict, options: FoldInOptions, result: FoldInResult) -> None:
    """fold_in.json: the source model, what was added, the options, the alignments, each pass's loss, the stages'
    seconds so far."""
    report = {"source": {"model": str(model_dir.resolve()), "identity": source_identity}, "added": result.added,
              "options": {k: v for k, v in asdict(options).items() if k != "progress"}, "alignment": result.alignment,
              "user_alignment": result.user_alignment,
              "content_loss": result.content_loss, "collab_loss": result.collab_loss, "seconds": result.seconds}
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
