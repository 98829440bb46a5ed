"""The row-sharded engine (docs/cluster.md, sections 2.2 and 3, "C1/C2"; `distributed.table_sharding:
rows`): the frozen backbone replicated on every rank, each of the four ID tables split by rows over the
ranks (`RowShards`), every rank holding only its rows and their Adam state; no DeepSpeed.

Every rank runs the plain engine's step on its share of the global batch through `ShardedTables`
(cllm4rec/sharded_tables.py): a batch's ID rows come from their owners and their gradients go back to
them, the item head is the sharded item softmax, scoring is the sharded top-k. The model is built with
each rank's rows only (`cllm4rec.row_shards.RowSlices`, trainer/engine_setup.py `table_layout`). No rank
gathers a whole table, in a step or anywhere else: checkpoints and saved models hold each rank's rows in a
file of its own (trainer/checkpoint.py), and resume on any number of ranks (trainer/row_checkpoint.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cllm4rec.collectives import Collectives
from cllm4rec.diagnostics import LogitMoments
from cllm4rec.interactions import UserItems
from cllm4rec.model import TABLE_NAMES, CLLM4Rec
from cllm4rec.row_shards import RowShards, row_slice
from cllm4rec.sharded_tables import ShardedTables
from trainer.data import Batch
from trainer.distributed import Dist
from trainer.checkpoint import load_table_rows, write_table_rows
from trainer.engine import PlainEngine
from trainer.phases import StepKind
from trainer.row_checkpoint import load_row_optimizer, save_row_optimizer
from trainer.schedule import StepPlan

KIND = "row-sharded"  # no world size: its checkpoints resume on any number of ranks


def shard_tables(model: CLLM4Rec, dist: Dist) -> dict[str, RowShards]:
    """Each table's layout over the ranks; a table of `model` built as this rank's rows (`RowSlices`, the
    training build) is kept, a whole one (a saved model, `incremental.init_from`) replaced by its rows."""
    layouts = {}
    for name in TABLE_NAMES:
        table = getattr(model, name)
        layouts[name] = RowShards(model.table_rows(name), dist.world_size)
        lo, hi = layouts[name].range(dist.rank)
        if table.shape[0] == hi - lo:
            continue
        if table.shape[0] != layouts[name].n_rows:
            raise ValueError(f"{name}: {table.shape[0]} rows are neither the whole table ({layouts[name].n_rows}) "
                             f"nor rank {dist.rank}'s {hi - lo} of {dist.world_size} ranks")
        setattr(model, name, row_slice(table.detach()[lo:hi].clone(), lo, table.requires_grad))
    return layouts


class RowShardedEngine(PlainEngine):
    """The plain engine's step on every rank, the ID tables row-sharded (module docstring). Every
    method that touches the tables is collective: all ranks call it together."""

    def __init__(self, model: CLLM4Rec, pretrain_lr: float, finetune_lr: float, *, dist: Dist,
                 plans: dict[StepKind, StepPlan] | None = None, optimizer: str = "adam"):
        """Shards `model`'s tables in place before the optimizer is built over them. optimizer: "adam"
        or "row_adam" (rows are whole on their owner, so row-wise Adam works as in one process)."""
        self.layouts = shard_tables(model, dist)
        super().__init__(model, pretrain_lr, finetune_lr, kept_gradients=False, plans=plans, optimizer=optimizer)
        self.dist = dist
        self.comm = Collectives(dist.rank, dist.world_size)
        self.table_access = ShardedTables({getattr(model, n): self.layouts[n] for n in TABLE_NAMES}, self.comm)

    @property
    def kind(self) -> str:
        return KIND

    def weigh(self, weight: float, mr_weight: float, prior_weight: float) -> tuple[float, float, float]:
        """Each rank's loss reaches backward unweighted: the item head's row gradients sum every rank's
        rows, scaled by the owner's own loss gradient, which must therefore be the same everywhere. A
        padding batch (weight 0) instead sends no rows to the head and weighs MR and prior by 0."""
        self.table_access.weight = weight
        return 1.0, weight * mr_weight, weight * prior_weight

    @torch.no_grad()
    def rank_items(self, batch: Batch, exclude: UserItems, rows: np.ndarray, k: int,
                   moments: LogitMoments | None = None, real: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """As `Engine.rank_items`, by the sharded top-k; `moments` gets, on each rank, the logits of
        every rank's real users for this rank's items, and this rank's own users' count."""
        scores = self.item_logits(batch)
        if moments is not None:
            reals = self.comm.all_gather(torch.tensor([int(real)], device=scores.logits.device))[:, 0]
            keep = torch.repeat_interleave(reals.bool(), torch.tensor(scores.counts, device=reals.device))
            moments.update(scores.logits[keep], first_item=scores.layout.range(self.dist.rank)[0],
                           users=len(rows) if real else 0)
        return scores.top_excluding(exclude, rows, k, self.comm)

    def full_tables(self) -> dict[str, torch.Tensor]:
        """The four tables, whole and fp32, on every rank (every rank's rows all-gathered): for tests and
        small tables; checkpoints, saved models and `collab_from_content` use the rows in place."""
        return {name: self.comm.all_gather_rows(getattr(self.model, name).detach())[0].cpu() for name in TABLE_NAMES}

    def save_tables(self, folder: Path) -> None:
        """Every rank writes its own rows of the four tables (no gather): tables-rows-r<rank>-of-<world>."""
        write_table_rows(folder, self.own_rows(), self.dist.rank, self.dist.world_size)

    def restore_tables(self, folder: Path, backbone: dict[str, torch.Tensor] | None) -> None:
        """This rank's rows, sliced from the table files whatever number of ranks (or layout) wrote them."""
        self.load_own_rows(load_table_rows(folder, {name: self.layouts[name].range(self.dist.rank)
                                                    for name in TABLE_NAMES}))

    def own_rows(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self.model, name).detach().float() for name in TABLE_NAMES}

    @torch.no_grad()
    def load_own_rows(self, rows: dict[str, torch.Tensor]) -> None:
        for name, value in rows.items():
            getattr(self.model, name).copy_(value)

    def column_mean(self, rows: torch.Tensor) -> torch.Tensor:
        """[K]: the whole table's mean from every rank's row sum and count (one [world, K + 1] all-gather)."""
        sums = self.comm.all_gather(torch.cat([rows.sum(dim=0), rows.new_tensor([rows.shape[0]])]))
        return sums[:, :-1].sum(dim=0) / sums[:, -1].sum()

    def trained_backbone(self) -> dict[str, torch.Tensor] | None:
        return None  # the backbone is frozen (engine_setup refuses a trained one)

    @torch.no_grad()
    def load_tables(self, tables: dict[str, torch.Tensor], backbone: dict[str, torch.Tensor] | None) -> None:
        """Each rank keeps its own rows of the whole `tables`."""
        for name, table in tables.items():
            lo, hi = self.layouts[name].range(self.dist.rank)
            getattr(self.model, name).copy_(table[lo:hi])

    def save_optimizer(self, folder: Path) -> None:
        save_row_optimizer(folder, self.optimizer, self.dist.rank, self.dist.world_size)

    def load_optimizer(self, folder: Path) -> None:
        """This rank's rows of the optimizer state, whatever number of ranks wrote it."""
        by_param = {id(getattr(self.model, name)): self.layouts[name] for name in TABLE_NAMES}
        layouts = [by_param[id(p)] for group in self.optimizer.param_groups for p in group["params"]]
        load_row_optimizer(folder, self.optimizer, layouts, self.dist.rank)
