"""Incremental training (`cllm4rec train --init-from RUN_OR_MODEL`, docs/incremental.md): a run on a dataset
prepared again later starts from an earlier model's rows instead of random ones.

1. The earlier model (a saved model folder, or a run folder's `model/`) is refused before anything trains
   when its backbone, tokenizer, K (the tables' width) or ID token layout (V: where ID tokens start, users
   then items, cllm4rec/tokenization.py) differs from this run's, or its backbone weights do.
2. Its users and items are matched to this run's dataset by raw id (`trainer/id_mapping.py`), read from
   the dataset it was trained on (whose sha256 must still be the one its identity records). Kept ids get
   their rows copied, bit-identical, in all four tables; removed ids are dropped; new ids start at the
   centroid of the earlier table (or, under `model.content_init_from_text`, those with text at its mean
   word embedding) and are folded in (`trainer/fold_in.py`, steps 1-4): with `incremental.align` other than
   `none`, new items with text start their collaborative rows at their text's image under a map fitted on
   the kept items; their content rows are learned by the content LLM from the documents that name them
   (biographies, item texts, reviews) with every other row and the backbone frozen, then the other new
   collaborative rows are set to their content rows.
3. Trained backbone or LoRA weights of the earlier model are loaded too.

This happens before the run's engine is built. With whole tables (the plain and ZeRO-3 engines) rank 0 folds
in and broadcasts the new rows, and DeepSpeed then partitions the initialised tables. With row-sharded tables
(`distributed.table_sharding: rows`) no rank holds a whole table here either: each reads its own kept rows
from the earlier model's table files by index (`ckpt.TableReader`), the centroids are summed over the ranks'
shares of the earlier tables, and the ranks fold in together through a row-sharded engine of their own,
discarded before the run's is built (`incremental.align` must then be `none`). The mapping is printed,
logged to MLflow (params `init_from.*` and the earlier model as an input of the parent run) and written to
`<output_dir>/init_from.json`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from cllm4rec.model import TABLE_NAMES, CLLM4Rec
from cllm4rec.row_shards import RowShards
from cllm4rec.zero_params import first_row, is_row_slice
from data_prep.atomic import atomic_write_text, sha256_file
from data_prep.processed import ProcessedDataset, dataset_hash, load_processed
from trainer import checkpoint as ckpt
from trainer.build import RunParts, load_weights, resolve_dataset
from trainer.config import ConfigError, TrainConfig
from trainer.distributed import Dist
from trainer.fold_in import (FoldInOptions, align_new_items, fold_in_engine, mapped_tables, new_corpora, read_new_texts,
                             start_from_text)
from trainer.id_mapping import IdMapping
from trainer.serving import model_folder, saved_config
from trainer.tracking import Tracker

log = logging.getLogger(__name__)
REPORT = "init_from.json"
# model keys that make a trained backbone's saved weights fit this run's (LoRA adapters, or the whole backbone)
BACKBONE_KEYS = ("train_backbone", "lora_r", "lora_alpha", "lora_target_modules")


def source_model(ref: str) -> Path:
    """The saved model folder `ref` names: itself, the one a pyfunc folder holds, or a run folder's model/."""
    path = Path(ref).expanduser()
    if not (path / ckpt.COMPLETE).is_file() and (path / "checkpoints").is_dir():
        if not (path / "model" / ckpt.COMPLETE).is_file():
            raise ckpt.CheckpointError(f"--init-from {path}: a run folder without a final model ({path / 'model'}); "
                                       f"let it finish, or write one from its latest checkpoint with "
                                       f"`cllm4rec export {path} --out MODEL`")
        return path / "model"
    return model_folder(path)


def differences(saved: ckpt.SavedModel, earlier: TrainConfig, config: TrainConfig, parts: RunParts) -> list[str]:
    """What keeps the earlier model's rows from meaning the same in this run: each as 'what: the earlier model
    has A, this run has B'."""
    checks: list[tuple[str, Any, Any]] = [
        ("backbone", saved.identity.get("backbone"), parts.backbone_ref),
        ("tokenizer", saved.identity.get("tokenizer"), parts.backbone_ref),
        ("K (hidden size, the tables' width)", ckpt.table_shapes(saved.path)["collab_item"][1], parts.model.dim),
        ("ID token layout (the first ID token, V = the backbone's vocabulary rows)", saved.identity.get("vocab_rows"),
         parts.model.vocab_rows),
        ("model.random_init (the backbone's weights)", earlier.model.random_init, config.model.random_init),
    ]
    if saved.extra:  # its trained backbone or LoRA weights load only into the same kind
        checks += [(f"model.{key} (its trained backbone weights)", getattr(earlier.model, key),
                    getattr(config.model, key)) for key in BACKBONE_KEYS]
    return [f"{what}: the earlier model has {a!r}, this run has {b!r}" for what, a, b in checks if a != b]


def earlier_dataset(saved: ckpt.SavedModel, config: TrainConfig) -> ProcessedDataset:
    """The dataset the earlier model was trained on (its raw ids), refused when it has changed since."""
    path = resolve_dataset(config.data.dataset, config.data.split_seed)
    if not (path / "meta.json").is_file() or dataset_hash(path) != saved.identity.get("dataset_hash"):
        state = "changed since (its meta.json's sha256 differs: prepared again in place?)" if (
            path / "meta.json").is_file() else "gone"
        raise ckpt.CheckpointError(
            f"--init-from {saved.path}: the dataset it was trained on, {path}, is {state}; its raw ids are needed to "
            f"map the earlier rows: prepare the new data under another --name (or --out) and keep the earlier one")
    return load_processed(path)


@contextlib.contextmanager
def backbone_frozen(model: CLLM4Rec) -> Iterator[None]:
    """The backbone's trainable weights frozen inside the block (the fold-in moves table rows only)."""
    trainable = [p for p in model.backbone.parameters() if p.requires_grad]
    model.backbone.requires_grad_(False)
    try:
        yield
    finally:
        for param in trainable:
            param.requires_grad_(True)


def share_rows(model: CLLM4Rec, mapping: IdMapping, dist: Dist) -> None:
    """Every rank takes rank 0's new rows (bit-equal tables on every rank before DeepSpeed partitions them)."""
    for name in TABLE_NAMES:
        table = getattr(model, name)
        new = torch.as_tensor(mapping.rows("users" if name.endswith("user") else "items") < 0, device=table.device)
        if new.any():
            with torch.no_grad():
                table[new] = dist.broadcast_tensor(table[new].contiguous())


@dataclass
class WarmStart:
    """What `warm_start` did: the earlier model, the mapping, the fold-in's loss per pass, its seconds."""

    source: Path
    identity: dict[str, Any]
    mapping: IdMapping
    options: dict[str, Any]
    content_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        loss = f" (content loss {self.content_loss[0]:.3f} -> {self.content_loss[-1]:.3f})" if self.content_loss else ""
        return (f"init from {self.source}: {self.mapping.summary()}; kept rows copied, new rows folded in from their "
                f"text{loss}, in {self.seconds:.1f} s")

    def report(self) -> dict[str, Any]:
        """init_from.json: the earlier model, the counts, the new and removed raw ids, the fold-in."""
        return {"source": {"model": str(self.source), "identity": self.identity}, "counts": self.mapping.counts(),
                "new": self.mapping.new, "removed": self.mapping.removed,
                "fold_in": {**self.options, "content_loss": self.content_loss, "seconds": self.seconds}}

    def write(self, out: Path) -> None:
        atomic_write_text(Path(out) / REPORT, json.dumps(self.report(), indent=2, sort_keys=True) + "\n")

    def log(self, tracker: Tracker) -> None:
        """The counts as params `init_from.<kind>.<kept|new|removed>` and the earlier model as an input of the
        parent run (context `init_from`; digest: the sha256 of its COMPLETE, which lists every file's; the counts
        as the profile)."""
        tracker.log_params({"init_from": {"model": str(self.source), **self.mapping.counts()}})
        tracker.log_input(f"init-from {self.source.parent.name}/{self.source.name}",
                          sha256_file(self.source / ckpt.COMPLETE), str(self.source), json.dumps(self.mapping.counts()),
                          context="init_from")


def carry_rows(model: CLLM4Rec, folder: Path, mapping: IdMapping, dist: Dist) -> None:
    """Set the rows of `model`'s row-sharded tables that this rank holds: a kept id's row read from the earlier
    model's table files in `folder` by its earlier index, a new id's at the earlier table's centroid (each rank
    sums its share of the earlier rows; one all-reduce per table). Collective."""
    with ckpt.TableReader(folder) as tables:
        for name in TABLE_NAMES:
            table = getattr(model, name)
            lo, n_earlier = first_row(table), tables.shapes[name][0]
            earlier = mapping.rows("users" if name.endswith("user") else "items")[lo:lo + table.shape[0]]
            share = RowShards(n_earlier, dist.world_size).range(dist.rank)
            centroid = dist.all_reduce_tensor(tables.column_sum(name, *share)) / n_earlier
            kept = torch.from_numpy(earlier >= 0)
            with torch.no_grad():
                table[~kept] = centroid.to(table.dtype)
                table[kept] = tables.rows_at(name, earlier[earlier >= 0]).to(table.device, table.dtype)


def fold_in_new_rows(config: TrainConfig, parts: RunParts, dist: Dist, mapping: IdMapping, options: FoldInOptions,
                     progress: bool) -> tuple[list[float], dict[str, Any]]:
    """Steps 1-4 of trainer/fold_in.py for the new ids of `mapping` (module docstring): whole tables on rank 0
    only, row-sharded ones on every rank together. Returns (the content loss of each pass, the alignment)."""
    model, new_users, new_items = parts.model, mapping.users < 0, mapping.items < 0
    sharded = is_row_slice(model.collab_user)
    if not (new_users.any() or new_items.any()) or not (sharded or dist.is_main):
        return [], {"method": options.align, "items": 0}
    corpora = new_corpora(parts.corpora, new_users, new_items)
    start_from_text(model, config, corpora, new_users, new_items)
    with backbone_frozen(model):
        engine = fold_in_engine(model, config, options.lr, new_users, new_items, dist)
        aligned, alignment = align_new_items(engine, parts.corpora, config, new_users, new_items, options.align,
                                             options.seed, progress, options.align_features)
        losses = read_new_texts(engine, corpora, config, options, config.pretrain.batch_size, new_users,
                                new_items & ~aligned)
        engine.optimizer.zero_grad(set_to_none=True)  # the run's engine starts without gradients (ZeRO-3 needs it)
    return losses, alignment


def warm_start(config: TrainConfig, parts: RunParts, dist: Dist, progress: bool = False) -> WarmStart:
    """Initialise `parts.model` from `config.incremental.init_from` (module docstring); collective."""
    start = time.perf_counter()
    source = source_model(config.incremental.init_from).resolve()
    sharded = is_row_slice(parts.model.collab_user)
    if sharded and config.incremental.align != "none":
        raise ConfigError(f"incremental.align={config.incremental.align} fits its map on whole tables, which "
                          f"distributed.table_sharding=rows never builds: set incremental.align=none (the default)")
    try:
        saved = ckpt.load_model(source, tables=not sharded)
    except ckpt.CheckpointError as error:
        raise ckpt.CheckpointError(f"--init-from {config.incremental.init_from}: {error}") from None
    earlier = saved_config(saved)
    problems = differences(saved, earlier, config, parts)
    if problems:
        raise ckpt.CheckpointError(f"--init-from {source}: refused, the rows would not mean the same in this run: "
                                   + "; ".join(problems))
    mapping = IdMapping.between(earlier_dataset(saved, earlier), parts.dataset)
    if not (mapping.users >= 0).any() and not (mapping.items >= 0).any():
        raise ckpt.CheckpointError(f"--init-from {source}: no user or item id in common with {parts.dataset_path}: "
                                   f"nothing to carry over (are the raw ids written the same way?)")
    inc = config.incremental
    # the maps read mean word embeddings here, as when incremental.align was measured (docs/incremental.md)
    options = FoldInOptions(passes=inc.passes, lr=inc.lr, seed=config.seed, align=inc.align, align_features="words",
                            progress=progress)
    if sharded:
        carry_rows(parts.model, source, mapping, dist)
    else:
        load_weights(parts.model, mapped_tables(saved.tables, mapping.users, mapping.items), saved.extra or None)
    losses, alignment = fold_in_new_rows(config, parts, dist, mapping, options, progress)
    if not sharded:
        share_rows(parts.model, mapping, dist)
    return WarmStart(source, saved.identity, mapping, {"passes": inc.passes, "lr": inc.lr, "alignment": alignment},
                     losses, time.perf_counter() - start)


def initial_model(config: TrainConfig, parts: RunParts, dist: Dist, progress: bool,
                  resume_from: Path | None) -> WarmStart | None:
    """`warm_start` when `config.incremental.init_from` names an earlier model and the run does not resume from
    `resume_from` (a checkpoint wins: `incremental` is read only when a run starts), else None; collective."""
    init_from = config.incremental.init_from
    if init_from and resume_from:
        log.info("--init-from %s not applied: resuming from %s (the checkpoint wins)", init_from, resume_from)
    return warm_start(config, parts, dist, progress) if init_from and not resume_from else None
