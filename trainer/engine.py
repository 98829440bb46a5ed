"""Training engines: the model plus one optimizer whose parameter groups are the trainable sets.

Groups: one per table set, named by its value — "collab" (Z^{l,u}, Z^{l,v}) and "content" (Z^{c,u},
Z^{c,v}) — and "backbone" (LLM-FtAll weights or LoRA adapters, when trained). A step names its kind
(`trainer.phases.StepKind`), whose row says which table set it trains and in which stage: only that
group (and the backbone group) moves, the optimizer skips the others entirely (no Adam update from a
zero or stale gradient). A group's Adam state is reset and its learning rate switched when it first
trains in the finetuning stage, so finetuning starts with fresh state, as the method trains a new
head over the pretrained tables.

`Engine` is the contract: every method the pipeline, the epoch loop, evaluation and serving call,
either shared here or declared abstract. `PlainEngine` runs in one process; `DeepSpeedEngine`
(trainer/deepspeed_engine.py) wraps the same model and optimizer in a DeepSpeed ZeRO-3 engine (any
number of ranks, nodes). Both normalise the LM loss by the count of the GLOBAL batch and scale by the
world size (ZeRO averages gradients over ranks), so N ranks take the same steps as one rank with the
same global batch.
"""
from __future__ import annotations

import abc
import resource
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cllm4rec.diagnostics import LogitMoments
from cllm4rec.interactions import UserItems
from cllm4rec.metrics import PAD, topk_excluding
from cllm4rec.model import CLLM4Rec
from cllm4rec.row_adam import RowAdam
from cllm4rec.table_access import LOCAL_TABLES, TableAccess
from cllm4rec.table_gradients import TableGradients
from cllm4rec.tasks import TableSet, Task
from trainer.build import load_weights
from trainer.checkpoint import load_tables, restore_optimizer, save_optimizer, write_tables
from trainer.data import Batch
from trainer.distributed import LOCAL, Dist
from trainer.phases import Stage, StepKind
from trainer.schedule import StepPlan, constant_plans

BACKBONE_GROUP = "backbone"  # the optimizer group of trained backbone or LoRA weights; it trains in every step


class SkipInactiveGroups:
    """Optimizer mixin: `step()` updates only the parameter groups marked `active`.

    Each group carries "name", "active" and "stage" (plain strings); the extra keys travel with
    `state_dict()`.
    """

    def __init__(self, groups: dict[str, list[torch.nn.Parameter]], lr: float, **options: Any):
        super().__init__([{"params": params, "name": name, "active": False, "stage": Stage.PRETRAIN.value}  # type: ignore[call-arg]
                          for name, params in groups.items() if params], lr=lr, **options)

    @torch.no_grad()
    def step(self, *args: Any, **kwargs: Any):
        every = self.param_groups
        self.param_groups = [group for group in every if group["active"]]
        try:
            return super().step(*args, **kwargs)  # type: ignore[misc]
        finally:
            self.param_groups = every


class TableSetAdam(SkipInactiveGroups, torch.optim.Adam):
    """torch Adam over the table-set groups (plain engine, DeepSpeed without optimizer offload).

    Fused (one kernel pass over each table per step, ~6x the default per-tensor loop on CPU): every
    item row has a gradient through the softmax denominator, so the update touches whole tables.
    """

    def __init__(self, groups: dict[str, list[torch.nn.Parameter]], lr: float):
        super().__init__(groups, lr, fused=True)


class TableSetRowAdam(SkipInactiveGroups, RowAdam):
    """Row-wise Adam (cllm4rec/row_adam.py) over the table-set groups (plain engine only)."""


def table_set_optimizer(groups: dict[str, list[torch.nn.Parameter]], lr: float, cpu_adam: bool = False,
                        kind: str = "adam"):
    """TableSetAdam, TableSetRowAdam (`kind` "row_adam"), or (ZeRO-Offload, which requires it) Adam over
    DeepSpeed's CPU Adam, whose C++ kernel is compiled on first use."""
    if kind == "row_adam":
        return TableSetRowAdam(groups, lr)
    if not cpu_adam:
        return TableSetAdam(groups, lr)
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    class TableSetCPUAdam(SkipInactiveGroups, DeepSpeedCPUAdam):
        pass

    return TableSetCPUAdam(groups, lr)


def build_optimizer(model: CLLM4Rec, lr: float, cpu_adam: bool = False, kind: str = "adam") -> torch.optim.Optimizer:
    """The one optimizer over the model's trainable groups (table sets, then the backbone's)."""
    return table_set_optimizer({TableSet.COLLAB.value: model.table_parameters(TableSet.COLLAB),
                                TableSet.CONTENT.value: model.table_parameters(TableSet.CONTENT),
                                BACKBONE_GROUP: model.backbone_parameters()}, lr, cpu_adam, kind)


class Engine(abc.ABC):
    """The engine contract: step selection, global loss normalisation and the step itself (shared), and
    the engine-specific methods (abstract). Every method the pipeline calls is one of these."""

    model: CLLM4Rec
    optimizer: torch.optim.Optimizer  # a SkipInactiveGroups optimizer
    device: torch.device
    dist: Dist = LOCAL
    forward_module: torch.nn.Module  # what a forward calls: the model, or DeepSpeed's engine around it
    table_access: TableAccess = LOCAL_TABLES  # how every forward reaches the ID tables (cllm4rec/table_access.py)

    def __init__(self, pretrain_lr: float, finetune_lr: float, lambda_c: float, lambda_l: float,
                 plans: dict[StepKind, StepPlan] | None = None):
        """plans: how each step kind trains (trainer/schedule.py); None: constant rates `pretrain_lr` /
        `finetune_lr` and the summed MR with λ_c, λ_l in every phase."""
        self.plans = plans or constant_plans(pretrain_lr, finetune_lr, lambda_c, lambda_l)

    def activate(self, step: StepKind) -> None:
        """Mark the groups `step` trains active (the backbone group always trains when present) and
        set their lr from the plan's schedule. A group entering a new stage starts with fresh Adam
        state and schedule; its position in the schedule (`sched_step`) travels with the optimizer's
        state_dict, so a resumed run continues it."""
        plan = self.plans[step]
        for index, group in enumerate(self.optimizer.param_groups):
            group["active"] = group["name"] in (step.trains.value, BACKBONE_GROUP)
            if not group["active"]:
                continue
            if group["stage"] != step.stage.value:
                self.reset_state(index)
                group["stage"], group["sched_step"] = step.stage.value, 0
            group["lr"] = plan.lr_at(int(group.get("sched_step", 0)))

    def advance_schedules(self) -> None:
        """After an update: each active group is one step further along its schedule."""
        for group in self.optimizer.param_groups:
            if group["active"]:
                group["sched_step"] = int(group.get("sched_step", 0)) + 1

    def reset_state(self, group_index: int) -> None:
        for param in self.group_tensors(group_index):
            self.optimizer.state.pop(param, None)

    def group_tensors(self, group_index: int) -> list[torch.Tensor]:
        """The tensors the optimizer keeps state for in group `group_index` (on this rank)."""
        return list(self.optimizer.param_groups[group_index]["params"])

    def train_step(self, step: StepKind, batch: Batch) -> dict[str, float]:
        """One update of what `step` trains on this rank's share of a global batch.

        Returns this rank's sums (lm_sum, lm_count, mr_sum, prior_sum) and "loss", its share of the
        global loss; a padding batch (weight 0, for ranks without rows) contributes zeros.
        """
        self.activate(step)
        batch = self.to_device(batch)
        weight = float(batch.pop("weight", torch.tensor(1.0)))
        lm_count = step.task.lm_count(batch["lengths"], batch["n_prompt"])
        global_count, global_ids = self.dist.all_reduce_sum(
            [weight * lm_count, weight * self.model.id_occurrences(batch["input_ids"])])
        factor, mr_weight, prior_weight = self.weigh(weight, *self.plans[step].weights(global_ids))
        out = self.forward(step.task, batch, lm_denominator=max(global_count, 1.0), mr_weight=mr_weight,
                           prior_weight=prior_weight)
        self.backward_and_step(out["loss"] * factor)
        self.advance_schedules()
        return {k: weight * float(v.detach()) for k, v in out.items()}

    def weigh(self, weight: float, mr_weight: float, prior_weight: float) -> tuple[float, float, float]:
        """(factor of this rank's loss before backward, MR weight, prior weight) for a batch of `weight`
        (0: a padding batch, which must add nothing). ZeRO averages gradients over the ranks: the loss
        is multiplied by the world size, and a padding batch's by 0."""
        return weight * self.dist.world_size, mr_weight, prior_weight

    @torch.no_grad()
    def rank_items(self, batch: Batch, exclude: UserItems, rows: np.ndarray, k: int,
                   moments: LogitMoments | None = None, real: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(items [B, min(k, J)], scores [B, min(k, J)]) of the whole catalogue for the batch's users
        `rows` (each prompt's last position), best first, each user's `exclude` items left out
        (`topk_excluding`: PAD / -inf past the last candidate). A `real` call adds the raw logits to
        `moments`. Collective where the forward is: every rank calls it together, a rank without users
        of its own with a padding batch and `real` False (its answer is then discarded)."""
        logits = self.item_logits(batch).float()
        if moments is not None and real:
            moments.update(logits)
        items = topk_excluding(logits, exclude, rows, k)
        return items, logits.gather(1, items.clamp(min=0)).masked_fill(items == PAD, float("-inf"))

    @torch.no_grad()
    def item_logits(self, batch: Batch) -> Any:
        """Whole-catalogue item logits [B, J] at each prompt's last position (with row-sharded tables,
        their `ShardScores`)."""
        self.set_train(False)
        batch = self.to_device(batch)
        batch.pop("weight", None)
        return self.forward(Task.SCORE, batch)["logits"]

    def forward(self, task: Task, batch: Batch, **loss_options: Any) -> dict[str, Any]:
        """`CLLM4Rec.forward` of `task` on a batch already on the device, through this engine's
        `table_access`; training tasks switch the model to training mode first."""
        if task is not Task.SCORE:
            self.set_train(True)
        return self.forward_module(task, **batch, tables=self.table_access, **loss_options)

    def set_train(self, mode: bool) -> None:
        self.model.train(mode)

    def to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def stats(self) -> dict[str, float]:
        """Per-rank figures: trainable elements held by this rank's optimizer, peak resident memory."""
        held = sum(t.numel() for i in range(len(self.optimizer.param_groups)) for t in self.group_tensors(i))
        out = {"rank": self.dist.rank, "world_size": self.dist.world_size,
               "trainable_elements_on_rank": held, "peak_rss_mib": round(peak_rss_mib(), 1)}
        if torch.cuda.is_available() and self.device.type == "cuda":
            out["peak_device_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return out

    # engine-specific -----------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def kind(self) -> str:
        """Names the optimizer-state layout ("plain", "deepspeed-zero3 x<ranks>"): a checkpoint resumes
        only under the same kind."""

    @abc.abstractmethod
    def config_files(self) -> dict[str, dict[str, Any]]:
        """The engine's own configuration to record with the run: file name → JSON content."""

    @abc.abstractmethod
    def backward_and_step(self, loss: torch.Tensor) -> None:
        """Backward of `loss`, then one update of the active groups."""

    @abc.abstractmethod
    def full_tables(self) -> dict[str, torch.Tensor]:
        """The four ID tables, whole and fp32, by name (collective)."""

    @abc.abstractmethod
    def trained_backbone(self) -> dict[str, torch.Tensor] | None:
        """The backbone weights that training changes (FtAll, Scratch, LoRA adapters), else None (collective)."""

    @abc.abstractmethod
    def load_tables(self, tables: dict[str, torch.Tensor], backbone: dict[str, torch.Tensor] | None) -> None:
        """Write whole tables (and trained backbone weights) into the model and its optimizer's masters."""

    def save_tables(self, folder: Path) -> None:
        """Write the four tables into a checkpoint or model folder (collective): here whole, by rank 0; the
        row-sharded engine has every rank write its own rows instead (trainer/checkpoint.py)."""
        tables = self.full_tables()
        if self.dist.is_main:
            write_tables(folder, tables)

    def restore_tables(self, folder: Path, backbone: dict[str, torch.Tensor] | None) -> None:
        """`load_tables` from a verified checkpoint or model folder, whatever layout its tables were written
        in (collective): here read whole; the row-sharded engine reads only its rows."""
        self.load_tables(load_tables(folder), backbone)

    def own_rows(self) -> dict[str, torch.Tensor]:
        """The rows of the four tables this rank holds whole, fp32, detached (they may share the model's
        storage) (collective): here every row; the row-sharded engine's own rows only. `load_own_rows`
        writes tables back in the same layout."""
        return self.full_tables()

    def load_own_rows(self, rows: dict[str, torch.Tensor]) -> None:
        """Write tables laid out as `own_rows` gives them into the model and its optimizer's masters."""
        self.load_tables(rows, None)

    def column_mean(self, rows: torch.Tensor) -> torch.Tensor:
        """[K]: the mean over every row of a table of which `rows` [n, K] are this rank's `own_rows`."""
        return rows.mean(dim=0)

    @abc.abstractmethod
    def save_optimizer(self, folder: Path) -> None:
        """Write the optimizer state into a checkpoint folder."""

    @abc.abstractmethod
    def load_optimizer(self, folder: Path) -> None:
        """Restore the optimizer state `save_optimizer` wrote into `folder`."""


class PlainEngine(Engine):
    """Forward / backward / step in one process (no launcher, no process group)."""

    def __init__(self, model: CLLM4Rec, pretrain_lr: float, finetune_lr: float, *, kept_gradients: bool = True,
                 plans: dict[StepKind, StepPlan] | None = None, optimizer: str = "adam"):
        """kept_gradients: the tables' gradients are built in dense buffers kept from step to step
        (cllm4rec/table_gradients.py) instead of autograd's fresh ones. plans: see `Engine`.
        optimizer: "adam" or "row_adam" (`model.table_optimizer`)."""
        super().__init__(pretrain_lr, finetune_lr, model.lambda_c, model.lambda_l, plans)
        self.model = self.forward_module = model
        self.device = model.collab_item.device
        self.optimizer = build_optimizer(model, pretrain_lr, kind=optimizer)
        if kept_gradients:
            self.table_access = TableAccess(TableGradients())

    @property
    def kind(self) -> str:
        return "plain"

    def config_files(self) -> dict[str, dict[str, Any]]:
        return {}

    def activate(self, step: StepKind) -> None:
        super().activate(step)
        kept = self.table_access.gradients
        if kept is not None:  # kept buffers only for the tables this step trains
            kept.keep_only(self.model.table_parameters(step.trains))

    def backward_and_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.table_access.apply()
        self.optimizer.step()

    def full_tables(self) -> dict[str, torch.Tensor]:
        return self.model.id_tables()

    def trained_backbone(self) -> dict[str, torch.Tensor] | None:
        extra = {n: p.detach() for n, p in self.model.backbone.named_parameters() if p.requires_grad}
        return extra or None

    @torch.no_grad()
    def load_tables(self, tables: dict[str, torch.Tensor], backbone: dict[str, torch.Tensor] | None) -> None:
        load_weights(self.model, tables, backbone)

    def save_optimizer(self, folder: Path) -> None:
        save_optimizer(folder, "tables", self.optimizer)

    def load_optimizer(self, folder: Path) -> None:
        restore_optimizer(folder, "tables", self.optimizer)


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
