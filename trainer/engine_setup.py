"""Which engine a config asks for, the backbone dtype and the table layout that implies, and building it
(docs/architecture.md, section 3): the plain engine in one process, or under a launcher or on request the
distributed engine, DeepSpeed ZeRO-3 or the row-sharded one (`distributed.table_sharding`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from cllm4rec.row_shards import RowSlices
from trainer.build import RunParts, TableLayout, builds_whole, pick_dtype
from trainer.config import ConfigError, TrainConfig
from trainer.deepspeed_engine import DeepSpeedEngine, fill_ds_config, resolve_ds_config
from trainer.distributed import Dist, launched
from trainer.engine import Engine, PlainEngine
from trainer.phases import StepKind
from trainer.rows_engine import RowShardedEngine
from trainer.schedule import StepPlan

log = logging.getLogger(__name__)


def want_deepspeed(engine: str) -> bool:
    """engine "auto": DeepSpeed when a launcher started this process (WORLD_SIZE is set: the DeepSpeed
    launcher, torchrun, Ray Train), else the plain engine."""
    if engine == "auto":
        return launched()
    return engine == "deepspeed"


def want_row_sharding(config: TrainConfig) -> bool:
    """The distributed engine with `distributed.table_sharding: rows`: the row-sharded engine, not ZeRO-3."""
    return want_deepspeed(config.distributed.engine) and config.distributed.table_sharding == "rows"


def load_ds_config(config: TrainConfig, dist: Dist, device: torch.device) -> tuple[Path, dict[str, Any]] | None:
    """(path, filled DeepSpeed config) when the run uses the DeepSpeed ZeRO-3 engine, else None."""
    if not want_deepspeed(config.distributed.engine) or want_row_sharding(config):
        return None
    path = resolve_ds_config(config.distributed.ds_config, device)
    return path, fill_ds_config(path, config.pretrain.batch_size, dist.world_size)


def model_dtype(config: TrainConfig, device: torch.device, ds: tuple[Path, dict[str, Any]] | None) -> torch.dtype:
    """The backbone dtype; under DeepSpeed "auto" follows the DeepSpeed config's precision."""
    if ds is None:
        return pick_dtype(config.model.dtype, device)
    path, ds_config = ds
    bf16 = bool(ds_config.get("bf16", {}).get("enabled"))
    wanted = torch.bfloat16 if bf16 else torch.float32
    if config.model.dtype != "auto" and pick_dtype(config.model.dtype, device) != wanted:
        raise ConfigError(f"model.dtype={config.model.dtype} does not match {path} (bf16 "
                          f"{'on' if bf16 else 'off'}): set model.dtype=auto or {str(wanted).removeprefix('torch.')}")
    return wanted


def table_layout(config: TrainConfig, dist: Dist, ds: tuple[Path, dict[str, Any]] | None) -> TableLayout:
    """How the model's tables are built for the engine (`build_run`): this rank's rows for the row-sharded
    engine, the ZeRO-3 partitions of `ds` with `distributed.partitioned_build`, else whole. Whole too under
    ZeRO-3 where the tables are written whole after they are drawn (`builds_whole`: `incremental.init_from`)."""
    if want_row_sharding(config):
        return RowSlices(dist.rank, dist.world_size)
    if ds is None or not config.distributed.partitioned_build:
        return None
    if builds_whole(config):
        log.info("building the whole model on every rank: incremental.init_from writes whole tables under ZeRO-3")
        return None
    return ds[1]


def build_engine(config: TrainConfig, dist: Dist, parts: RunParts, device: torch.device,
                 ds: tuple[Path, dict[str, Any]] | None, plans: dict[StepKind, StepPlan]) -> Engine:
    """The row-sharded engine (`want_row_sharding`), the plain engine (`ds` None) or DeepSpeed ZeRO-3 over
    `parts.model`; options an engine does not support are refused, naming the key."""
    pre = config.pretrain
    if want_row_sharding(config):
        return build_row_engine(config, dist, parts, plans)
    if ds is None:
        return PlainEngine(parts.model, pre.lr, config.finetune.lr, plans=plans, optimizer=config.model.table_optimizer)
    if config.model.table_optimizer != "adam":
        raise ConfigError(f"model.table_optimizer={config.model.table_optimizer} works with the plain engine only: ZeRO-3 "
                          f"hands the optimizer flat partitions, not table rows; set model.table_optimizer=adam or "
                          f"distributed.engine=plain")
    if config.model.compile:
        raise ConfigError("model.compile=true works with the plain engine only: ZeRO-3 gathers and releases "
                          "parameters in module hooks that a compiled backbone would bypass; set "
                          "model.compile=false or distributed.engine=plain")
    log.info("DeepSpeed ZeRO-3 on %d rank(s) with %s", dist.world_size, ds[0])
    return DeepSpeedEngine(parts.model, pre.lr, config.finetune.lr, ds_config=ds[1], dist=dist, device=device, plans=plans)


def build_row_engine(config: TrainConfig, dist: Dist, parts: RunParts, plans: dict[StepKind, StepPlan]) -> Engine:
    """The row-sharded engine; a trained backbone, or a table with fewer rows than ranks, is refused."""
    if config.model.train_backbone != "none":
        raise ConfigError(f"model.train_backbone={config.model.train_backbone} (ablation={config.ablation}) trains "
                          f"backbone weights, which distributed.table_sharding=rows replicates frozen on every rank; "
                          f"set distributed.table_sharding=zero3")
    smallest = min(parts.dataset.n_users, parts.dataset.n_items)
    if smallest < dist.world_size:
        raise ConfigError(f"distributed.table_sharding=rows gives every rank at least one row of each table, but the "
                          f"smallest table has {smallest} rows for {dist.world_size} ranks")
    log.info("row-sharded ID tables on %d rank(s)", dist.world_size)
    return RowShardedEngine(parts.model, config.pretrain.lr, config.finetune.lr, dist=dist, plans=plans,
                            optimizer=config.model.table_optimizer)
