"""The DeepSpeed ZeRO-3 engine (docs/architecture.md, section 3; ds_configs/README.md): the model and
its one optimizer under `deepspeed.initialize`, every parameter partitioned over the ranks; and the
DeepSpeed config files: the shipped ones by name, their batch keys filled from the trainer's batch."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from cllm4rec.model import CLLM4Rec, TABLE_NAMES
from cllm4rec.zero_params import is_partitioned
from trainer.checkpoint import CheckpointError
from trainer.config import ConfigError
from trainer.distributed import Dist
from trainer.engine import Engine, build_optimizer
from trainer.phases import StepKind
from trainer.schedule import StepPlan
from trainer.zero_build import exact_partition

DS_CONFIGS = Path(__file__).resolve().parent.parent / "ds_configs"


class EngineError(ConfigError):
    """A DeepSpeed config problem; the message names the file and key."""


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
                 dist: Dist, device: torch.device, plans: dict[StepKind, StepPlan] | None = None):
        """The tables are read whole inside the module's forward (`LOCAL_TABLES`): ZeRO-3 gathers them in
        its hooks and takes their gradients through autograd's."""
        import deepspeed

        super().__init__(pretrain_lr, finetune_lr, model.lambda_c, model.lambda_l, plans)
        self.dist, self.device = dist, device
        self.ds_config = ds_config
        self.bf16 = bool(ds_config.get("bf16", {}).get("enabled"))
        partitioned = is_partitioned(model.collab_user)  # built into partitions (trainer/zero_build.py)
        exact = model.id_tables() if self.bf16 and not partitioned else None  # fp32 values, before bf16 rounds them
        zero = ds_config.get("zero_optimization", {})
        offload = zero.get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme")
        base = build_optimizer(model, pretrain_lr, cpu_adam=offload and ds_config.get("zero_force_ds_cpu_optimizer", True))
        self.ds, self.ds_optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=base, config=ds_config, dist_init_required=False)
        self.model, self.forward_module = self.ds.module, self.ds
        self.optimizer = base
        if exact is not None:
            self.load_tables(exact, None)
        elif self.bf16:
            self.restore_exact_partitions()

    def group_tensors(self, group_index: int) -> list[torch.Tensor]:
        """The flat fp32 partitions (this rank's) that belong to optimizer group `group_index`."""
        zero = self.ds_optimizer
        return [zero.fp32_partitioned_groups_flat[sub] for sub, group in zero.sub_group_to_group_id.items()
                if group == group_index]

    @property
    def kind(self) -> str:
        return f"deepspeed-zero3 x{self.dist.world_size}"

    def config_files(self) -> dict[str, dict[str, Any]]:
        return {"deepspeed.json": self.ds_config}

    def backward_and_step(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)
        self.ds.step()

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

    def restore_exact_partitions(self) -> None:
        """Write each table's fp32 starting values, drawn again for this rank's slice only, into its fp32
        master partition (DeepSpeed made the masters from the bf16 partitions)."""
        from deepspeed.utils import safe_set_local_fp32_param

        for name in TABLE_NAMES:
            param = getattr(self.model, name)
            safe_set_local_fp32_param(param, exact_partition(self.model.table_init, name, param).to(self.device))

    def save_optimizer(self, folder: Path) -> None:
        """DeepSpeed's own checkpoint of the engine (per-rank optimizer partitions) under folder/deepspeed."""
        self.ds.save_checkpoint(str(folder / "deepspeed"), tag="state", save_latest=False)

    def load_optimizer(self, folder: Path) -> None:
        path, _ = self.ds.load_checkpoint(str(folder / "deepspeed"), tag="state", load_optimizer_states=True,
                                          load_lr_scheduler_states=False, load_module_strict=False)
        if path is None:
            raise CheckpointError(f"{folder / 'deepspeed'}: DeepSpeed found no engine state to load")
