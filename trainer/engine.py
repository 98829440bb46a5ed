"""Training engines: the model plus one optimizer whose parameter groups are the trainable sets.

Groups: "collab" (Z^{l,u}, Z^{l,v}), "content" (Z^{c,u}, Z^{c,v}) and "backbone" (LLM-FtAll weights or
LoRA adapters, when trained). A step names what it trains — "collab" / "content" in pretraining,
"rec" / "rec_content" in finetuning — and only those groups move: the optimizer skips the other
groups entirely (no Adam update from a zero or stale gradient). A group's Adam state is reset and
its learning rate switched when it first trains in the finetuning stage, so finetuning starts with
fresh state, as the method trains a new head over the pretrained tables.

`PlainEngine` runs in one process. `DeepSpeedEngine` wraps the same model and optimizer in a
DeepSpeed ZeRO-3 engine (any number of ranks, nodes). Both normalise the LM loss by the token
count of the GLOBAL batch and scale by the world size (ZeRO averages gradients over ranks), so N
ranks take the same steps as one rank with the same global batch.
"""
from __future__ import annotations

import json
import logging
import math
import resource
from pathlib import Path
from typing import Any

import torch

from cllm4rec.model import CLLM4Rec, TABLE_NAMES
from cllm4rec.row_adam import RowAdam
from cllm4rec.table_gradients import TableGradients
from trainer.checkpoint import CheckpointError, restore_optimizer, save_optimizer
from trainer.config import ConfigError
from trainer.build import load_weights
from trainer.data import Batch
from trainer.distributed import LOCAL, Dist, launched
from trainer.schedule import StepPlan, constant_plans

log = logging.getLogger(__name__)
DS_CONFIGS = Path(__file__).resolve().parent.parent / "ds_configs"


class EngineError(ConfigError):
    """A DeepSpeed config problem; the message names the file and key."""


class SkipInactiveGroups:
    """Optimizer mixin: `step()` updates only the parameter groups marked `active`.

    Each group carries "name", "active" and "stage"; the extra keys travel with `state_dict()`.
    """

    def __init__(self, groups: dict[str, list[torch.nn.Parameter]], lr: float, **options: Any):
        super().__init__([{"params": params, "name": name, "active": False, "stage": "pretrain"}  # type: ignore[call-arg]
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


def main_part_count(task: str, batch: Batch) -> float:
    """The loss denominator of a batch: main-part tokens (LM tasks) or rows ("rec")."""
    if task == "rec":
        return float(batch["input_ids"].shape[0])
    return float((batch["lengths"] - batch["n_prompt"]).sum())


class Engine:
    """What both engines share: step selection, global loss normalisation, the step itself."""

    model: CLLM4Rec
    optimizer: torch.optim.Optimizer  # a SkipInactiveGroups optimizer
    device: torch.device
    dist: Dist = LOCAL

    def __init__(self, pretrain_lr: float, finetune_lr: float, lambda_c: float, lambda_l: float,
                 plans: dict[str, StepPlan] | None = None):
        """plans: what each step kind trains and how (trainer/schedule.py); None: constant rates
        `pretrain_lr` / `finetune_lr` and the summed MR with λ_c, λ_l in every phase."""
        self.plans = plans or constant_plans(pretrain_lr, finetune_lr, lambda_c, lambda_l)

    def build_optimizer(self, model: CLLM4Rec, pretrain_lr: float, cpu_adam: bool = False,
                        kind: str = "adam") -> torch.optim.Optimizer:
        return table_set_optimizer({"collab": model.table_parameters("collab"), "content": model.table_parameters("content"),
                                    "backbone": model.backbone_parameters()}, pretrain_lr, cpu_adam, kind)

    def activate(self, step: str) -> None:
        """Mark the groups `step` trains active (the backbone group always trains when present) and
        set their lr from the plan's schedule. A group entering a new stage starts with fresh Adam
        state and schedule; its position in the schedule (`sched_step`) travels with the optimizer's
        state_dict, so a resumed run continues it."""
        plan = self.plans[step]
        for index, group in enumerate(self.optimizer.param_groups):
            group["active"] = group["name"] in (plan.group, "backbone")
            if not group["active"]:
                continue
            if group["stage"] != plan.stage:
                self.reset_state(index)
                group["stage"], group["sched_step"] = plan.stage, 0
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
        return list(self.optimizer.param_groups[group_index]["params"])

    def train_step(self, task: str, batch: Batch, step: str) -> dict[str, float]:
        """One update of what `step` trains on this rank's share of a global batch.

        Returns this rank's sums (lm_sum, lm_count, mr_sum, prior_sum) and "loss", its share of the
        global loss; a padding batch (weight 0, for ranks without rows) contributes zeros.
        """
        self.activate(step)
        batch = self.to_device(batch)
        weight = float(batch.pop("weight", torch.tensor(1.0)))
        global_count, global_ids = self.dist.all_reduce_sum(
            [weight * main_part_count(task, batch), weight * self.model.id_occurrences(batch["input_ids"])])
        mr_weight, prior_weight = self.plans[step].weights(global_ids)
        out = self.forward(task, batch, lm_denominator=max(global_count, 1.0), mr_weight=mr_weight, prior_weight=prior_weight)
        self.backward_and_step(out["loss"] * (weight * self.dist.world_size))
        self.advance_schedules()
        return {k: weight * float(v.detach()) for k, v in out.items()}

    @torch.no_grad()
    def item_logits(self, batch: Batch) -> torch.Tensor:
        """Whole-catalogue item logits [B, J] at each prompt's last position."""
        self.set_train(False)
        batch = self.to_device(batch)
        batch.pop("weight", None)
        return self.forward("score", batch)["logits"]

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
    def forward(self, task: str, batch: Batch, **kwargs: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def backward_and_step(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def set_train(self, mode: bool) -> None:
        raise NotImplementedError


class PlainEngine(Engine):
    """Forward / backward / step in one process (no launcher, no process group)."""

    def __init__(self, model: CLLM4Rec, pretrain_lr: float, finetune_lr: float, *, kept_gradients: bool = True,
                 plans: dict[str, StepPlan] | None = None, optimizer: str = "adam"):
        """kept_gradients: the tables' gradients are built in dense buffers kept from step to step
        (cllm4rec/table_gradients.py) instead of autograd's fresh ones. plans: see `Engine`.
        optimizer: "adam" or "row_adam" (`model.table_optimizer`)."""
        super().__init__(pretrain_lr, finetune_lr, model.lambda_c, model.lambda_l, plans)
        self.model = model
        self.device = model.collab_item.device
        self.optimizer = self.build_optimizer(model, pretrain_lr, kind=optimizer)
        model.table_gradients = TableGradients() if kept_gradients else None

    def activate(self, step: str) -> None:
        super().activate(step)
        if self.model.table_gradients is not None:  # kept buffers only for the tables this step trains
            self.model.table_gradients.keep_only(self.model.table_parameters(self.plans[step].group))

    def forward(self, task: str, batch: Batch, **kwargs: Any) -> dict[str, torch.Tensor]:
        if task != "score":
            self.set_train(True)
        return self.model(task, **batch, **kwargs)

    def backward_and_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.model.table_gradients is not None:
            self.model.table_gradients.apply()
        self.optimizer.step()

    def set_train(self, mode: bool) -> None:
        self.model.train(mode)

    def full_tables(self) -> dict[str, torch.Tensor]:
        return self.model.id_tables()

    def trained_backbone(self) -> dict[str, torch.Tensor] | None:
        """The backbone weights that training changes (FtAll, Scratch, LoRA adapters), else None."""
        extra = {n: p.detach() for n, p in self.model.backbone.named_parameters() if p.requires_grad}
        return extra or None

    @torch.no_grad()
    def load_tables(self, tables: dict[str, torch.Tensor], backbone: dict[str, torch.Tensor] | None) -> None:
        load_weights(self.model, tables, backbone)

    def save_optimizer(self, folder: Path) -> None:
        save_optimizer(folder, "tables", self.optimizer)

    def load_optimizer(self, folder: Path) -> None:
        restore_optimizer(folder, "tables", self.optimizer)


# ---- DeepSpeed ---------------------------------------------------------------------------------

BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def resolve_ds_config(ref: str, device: torch.device) -> Path:
    """A shipped config name (zero3_bf16, zero3_offload, zero3_cpu; "auto" picks by device) or a path."""
    if ref == "auto":
        ref = "zero3_bf16" if device.type == "cuda" else "zero3_cpu"
    path = Path(ref)
    if path.suffix != ".json":
        path = DS_CONFIGS / f"{ref}.json"
    if not path.is_file():
        shipped = sorted(p.stem for p in DS_CONFIGS.glob("*.json"))
        raise EngineError(f"DeepSpeed config {ref!r} not found (shipped: {', '.join(shipped)}, or a .json path)")
    return path


def fill_ds_config(path: Path, batch_size: int, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config of `path` with its batch keys filled from the trainer's batch size.

    The trainer's global batch is split over ranks (micro = ceil(batch / ranks), accumulation 1);
    a file that sets a batch key to a different number is an error naming the key.
    """
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise EngineError(f"{path}: malformed JSON: {error}") from None
    micro = math.ceil(batch_size / world_size)
    wanted = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
              "train_batch_size": micro * world_size}
    for key, value in wanted.items():
        given = config.get(key, "auto")
        if given != "auto" and given != value:
            raise EngineError(f"{path}: '{key}' is {given!r} but the trainer's batch size gives {value}; "
                              f"set it to \"auto\" (the trainer fills batch keys)")
        config[key] = value
    if config.get("gradient_clipping", 1.0) != 0.0:
        raise EngineError(f"{path}: 'gradient_clipping' must be 0.0 (the method does not clip, and one global "
                          f"norm would couple the table sets); DeepSpeed's default is 1.0")
    if config.get("zero_optimization", {}).get("stage") != 3:
        raise EngineError(f"{path}: 'zero_optimization.stage' must be 3")
    return config


class DeepSpeedEngine(Engine):
    """The model under a DeepSpeed ZeRO-3 engine: every parameter partitioned over the ranks, the
    optimizer holding only the trainable groups' fp32 partitions. Every method that touches
    parameters is collective: all ranks call it together."""

    def __init__(self, model: CLLM4Rec, pretrain_lr: float, finetune_lr: float, *, ds_config: dict[str, Any],
                 dist: Dist, device: torch.device, plans: dict[str, StepPlan] | None = None):
        import deepspeed

        super().__init__(pretrain_lr, finetune_lr, model.lambda_c, model.lambda_l, plans)
        self.dist, self.device = dist, device
        self.ds_config = ds_config
        model.table_gradients = None  # ZeRO-3 takes the tables' gradients through autograd's own hooks
        self.bf16 = bool(ds_config.get("bf16", {}).get("enabled"))
        exact = model.id_tables() if self.bf16 else None  # fp32 values, before bf16 rounds them
        zero = ds_config.get("zero_optimization", {})
        offload = zero.get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme")
        base = self.build_optimizer(model, pretrain_lr, cpu_adam=offload and ds_config.get("zero_force_ds_cpu_optimizer", True))
        self.ds, self.ds_optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=base, config=ds_config, dist_init_required=False)
        self.model = self.ds.module
        self.optimizer = base
        if exact is not None:
            self.load_tables(exact, None)

    def group_tensors(self, group_index: int) -> list[torch.Tensor]:
        """The flat fp32 partitions (this rank's) that belong to optimizer group `group_index`."""
        zero = self.ds_optimizer
        return [zero.fp32_partitioned_groups_flat[sub] for sub, group in zero.sub_group_to_group_id.items()
                if group == group_index]

    def forward(self, task: str, batch: Batch, **kwargs: Any) -> dict[str, torch.Tensor]:
        if task != "score":
            self.set_train(True)
        return self.ds(task, **batch, **kwargs)

    def backward_and_step(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)
        self.ds.step()

    def set_train(self, mode: bool) -> None:
        self.ds.module.train(mode)

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.backbone.named_parameters() if p.requires_grad]

    def full_tables(self) -> dict[str, torch.Tensor]:
        """The four tables, full and fp32 from the master partitions, on every rank (collective)."""
        from deepspeed.utils import safe_get_full_fp32_param

        return {name: safe_get_full_fp32_param(getattr(self.model, name)).detach().cpu() for name in TABLE_NAMES}

    def trained_backbone(self) -> dict[str, torch.Tensor] | None:
        from deepspeed.utils import safe_get_full_fp32_param

        extra = {n: safe_get_full_fp32_param(p).detach().cpu() for n, p in self._trainable()}
        return extra or None

    @torch.no_grad()
    def load_tables(self, tables: dict[str, torch.Tensor], backbone: dict[str, torch.Tensor] | None) -> None:
        """Write full values into the fp32 masters and the partitioned module parameters (collective)."""
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param

        params = {**{name: getattr(self.model, name) for name in TABLE_NAMES}, **dict(self._trainable())}
        for name, value in {**tables, **(backbone or {})}.items():
            param = params[name]
            safe_set_full_fp32_param(param, value.to(self.device, torch.float32))
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                param.data.copy_(value.to(param.device, param.dtype))

    def save_optimizer(self, folder: Path) -> None:
        """DeepSpeed's own checkpoint of the engine (per-rank optimizer partitions) under folder/deepspeed."""
        self.ds.save_checkpoint(str(folder / "deepspeed"), tag="state", save_latest=False)

    def load_optimizer(self, folder: Path) -> None:
        path, _ = self.ds.load_checkpoint(str(folder / "deepspeed"), tag="state", load_optimizer_states=True,
                                          load_lr_scheduler_states=False, load_module_strict=False)
        if path is None:
            raise CheckpointError(f"{folder / 'deepspeed'}: DeepSpeed found no engine state to load")


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def want_deepspeed(engine: str) -> bool:
    """engine "auto": DeepSpeed when a launcher started this process (WORLD_SIZE is set: the DeepSpeed
    launcher, torchrun, Ray Train), else the plain engine."""
    if engine == "auto":
        return launched()
    return engine == "deepspeed"
