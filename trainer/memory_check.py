"""The memory preflight: before a run builds its model, the bytes each rank will hold (trainer/memory_plan.py)
against the memory each rank has. A run that does not fit stops on every rank with the breakdown and what to
change (`distributed.memory_check`, `distributed.memory_headroom`); `cllm4rec plan-memory` prints the same
table without training (docs/cluster.md, section 3.1).

The inputs load no weights: the backbone's sizes come from its config (the model made on PyTorch's meta
device), the dataset's users, items and longest training history from its meta.json and the interactions'
user and split columns; the engine, ranks, precision and DeepSpeed config are the run's. Memory available to
a rank: host memory (Linux's MemAvailable, the figure psutil reports as `available`, or less where this
process's cgroup has a limit) divided among the ranks of its node; on a GPU, the device's free memory
(`torch.cuda.mem_get_info`).
"""
from __future__ import annotations

import logging
import math
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cllm4rec.backbone import backbone_config
from cllm4rec.tasks import Task
from data_prep.errors import DataPrepError
from data_prep.processed import read_meta
from trainer.build import builds_whole, pick_device, resolve_dataset
from trainer.config import ConfigError, ModelConfig, TrainConfig
from trainer.deepspeed_engine import fill_ds_config, resolve_ds_config
from trainer.distributed import Dist, launched
from trainer.engine_setup import model_dtype
from trainer.memory_plan import (DEVICE, GIB, HOST, PROMPT_TOKENS, MemoryPlan, Setup, Shapes, gib, plan_memory,
                                 render, shortfalls)
from trainer.phases import StepKind, training_units

log = logging.getLogger(__name__)
UNLIMITED = 2**60  # a cgroup limit at or above this is no limit (cgroup v1 writes 2^63 rounded to a page)


class InsufficientMemory(ConfigError):
    """The estimated peak of a rank exceeds the memory it has; the message holds the breakdown."""


def planned_engine(config: TrainConfig, distributed: bool) -> str:
    """The engine a run of `config` uses: "plain", or with the distributed engine "rows" or "zero3"."""
    if not distributed:
        return "plain"
    return "rows" if config.distributed.table_sharding == "rows" else "zero3"


@dataclass(frozen=True)
class BackboneSizes:
    """A backbone's sizes, read from its config."""

    params: int  # distinct parameter elements (tied weights once), LoRA adapters included
    adapters: int  # LoRA adapter elements (0 without LoRA)
    dim: int  # K: the input embedding's width
    layers: int
    heads: int
    vocab: int  # rows of the output embedding: vocabulary logits per token


def backbone_sizes(cfg: ModelConfig) -> BackboneSizes:
    """`cfg.backbone`'s sizes from its config alone: the model is made on PyTorch's meta device (shapes, no
    storage); with `train_backbone: lora`, the adapters PEFT would attach counted too."""
    from transformers import AutoModelForCausalLM

    from data_prep.assets import resolve_backbone

    hf = backbone_config(resolve_backbone(cfg.backbone))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    weights = {name: tuple(w.shape) for name, w in model.named_parameters()}  # tied weights once
    adapters = 0
    if cfg.train_backbone == "lora":
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULT_TARGETS

        adapters = lora_elements(weights, cfg.lora_r, cfg.lora_target_modules or DEFAULT_TARGETS.get(hf.model_type, []))
    return BackboneSizes(sum(math.prod(shape) for shape in weights.values()) + adapters, adapters,
                         int(model.get_input_embeddings().weight.shape[1]), int(hf.num_hidden_layers),
                         int(hf.num_attention_heads), int(model.get_output_embeddings().weight.shape[0]))


def lora_elements(weights: dict[str, tuple[int, ...]], rank: int, targets: list[str]) -> int:
    """Elements of rank-`rank` LoRA adapters on the 2-D weights (name → shape) of the modules `targets` names
    (a module matches a target equal to its name or to its last dotted parts, as in PEFT): r·(in + out) each."""
    total = 0
    for name, shape in weights.items():
        module = name.removesuffix(".weight")
        if len(shape) == 2 and module != name and any(module == t or module.endswith(f".{t}") for t in targets):
            total += rank * sum(shape)
    return total


def longest_history(dataset: Path) -> int:
    """Most training interactions of one user in a processed dataset (its interactions' user and split columns)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    file = Path(dataset) / "interactions.parquet"
    try:
        table = pq.read_table(file, columns=["user", "split"])
    except (OSError, pa.ArrowException) as error:
        raise DataPrepError(f"{file}: unreadable ({error}); prepare the dataset again") from None
    users = table.filter(pc.equal(table["split"], "train"))["user"]
    return int(pc.max(pc.value_counts(users).field("counts")).as_py() or 0) if len(users) else 0


def run_shapes(config: TrainConfig, ranks: int, catalogue: tuple[int, int] | None = None) -> Shapes:
    """The shapes of a run of `config` on `ranks` ranks; `catalogue`: (users, items) instead of the dataset's,
    whose longest history is then taken as `data.max_items`."""
    if catalogue is None:
        path = resolve_dataset(config.data.dataset, config.data.split_seed)
        counts = read_meta(path)["counts"]
        users, items, history = counts["users"], counts["items"], longest_history(path)
    else:
        (users, items), history = catalogue, config.data.max_items
    backbone = backbone_sizes(config.model)
    content = any(step.task is Task.CONTENT_LM for step in schedule_steps(config))
    trained = {"full": backbone.params - backbone.adapters, "lora": backbone.adapters}.get(config.model.train_backbone, 0)
    return Shapes(users=users, items=items, dim=backbone.dim, layers=backbone.layers, heads=backbone.heads,
                  backbone_params=backbone.params, trained_backbone=trained,
                  seq_len=PROMPT_TOKENS + max(min(config.data.max_items, history),
                                              config.data.max_main_tokens if content else 0),
                  batch=math.ceil(max(config.pretrain.batch_size, config.finetune.batch_size) / ranks),
                  vocab=backbone.vocab, main_tokens=config.data.max_main_tokens)


def schedule_steps(config: TrainConfig) -> set[StepKind]:
    """The step kinds the run's schedule takes."""
    return {step for unit in training_units(config) for step in unit.steps(config)}


def run_setup(config: TrainConfig, engine: str, ranks: int, device: torch.device, dtype: torch.dtype,
              ds_config: dict[str, Any] | None) -> Setup:
    """How a run of `config` holds its shapes: `engine` on `ranks` ranks of `device`, the backbone in `dtype`,
    `ds_config` the ZeRO-3 engine's filled DeepSpeed config (None otherwise)."""
    steps = schedule_steps(config)
    zero = (ds_config or {}).get("zero_optimization", {})
    fp32_grads = (ds_config or {}).get("data_types", {}).get("grad_accum_dtype") in ("fp32", "float32")
    return Setup(engine=engine, ranks=ranks, gpu=device.type == "cuda", dtype_bytes=dtype.itemsize,
                 trained_sets=len({step.trains for step in steps}),
                 item_head=any(step.task in (Task.COLLAB_LM, Task.RECOMMEND) for step in steps),
                 vocab_head=any(step.task is Task.CONTENT_LM for step in steps),
                 checkpointing=config.model.activation_checkpointing, ease=config.baselines.ease,
                 partitioned_build=engine == "rows" or (config.distributed.partitioned_build and not builds_whole(config)),
                 offload_params=zero.get("offload_param", {}).get("device", "none") in ("cpu", "nvme"),
                 offload_optimizer=zero.get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme"),
                 grad_bytes=4 if fp32_grads else dtype.itemsize,
                 max_live=int(zero.get("stage3_max_live_parameters", 10**9)))


def plan_of_run(config: TrainConfig, engine: str, ranks: int, device: torch.device, dtype: torch.dtype,
                ds_config: dict[str, Any] | None, catalogue: tuple[int, int] | None = None) -> MemoryPlan:
    """The memory plan of a run of `config` (see `run_shapes`, `run_setup`)."""
    return plan_memory(run_shapes(config, ranks, catalogue), run_setup(config, engine, ranks, device, dtype, ds_config))


def meminfo_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Linux's MemAvailable in bytes (what psutil reports as `available`); None where there is no such file."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cgroup_available(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What this process's memory cgroup still admits: limit − (usage − inactive file pages), the least over
    cgroup v2 (`memory.max`) and v1 (`memory.limit_in_bytes`); None without a limit."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            room = _cgroup_room(root / path.lstrip("/"), "memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            room = _cgroup_room(root / "memory" / path.lstrip("/"), "memory.limit_in_bytes", "memory.usage_in_bytes",
                                "total_inactive_file")
        else:
            continue
        if room is not None:
            rooms.append(room)
    return min(rooms) if rooms else None


def _cgroup_room(folder: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    """limit − (usage − inactive file pages) of one cgroup folder; None without a limit or its files."""
    try:
        limit = (folder / limit_file).read_text().strip()
        usage = int((folder / usage_file).read_text())
        stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines() if line.strip())
    except (OSError, ValueError):
        return None
    if limit == "max" or int(limit) >= UNLIMITED:
        return None
    return max(0, int(limit) - usage + int(stat.get(inactive_key, 0)))


def host_available() -> int | None:
    """Host memory this process can still get: the smaller of MemAvailable and its cgroup's room."""
    known = [v for v in (meminfo_available(), cgroup_available()) if v is not None]
    return min(known) if known else None


def device_available(device: torch.device) -> int | None:
    """Free memory of a CUDA `device` (`torch.cuda.mem_get_info`); None for a CPU."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def measure(device: torch.device) -> dict[str, Any]:
    """This rank's node, its host memory available and its device's free memory (bytes; None: not known)."""
    return {"node": socket.gethostname(), HOST: host_available(), DEVICE: device_available(device)}


def share_per_rank(measured: list[dict[str, Any]]) -> dict[str, int | None]:
    """The memory each rank can count on, from every rank's `measure()`: the least free GPU memory of any rank,
    and the least host memory of any node divided among that node's ranks."""
    ranks_on = Counter(m["node"] for m in measured)
    hosts = [m[HOST] // ranks_on[m["node"]] for m in measured if m[HOST] is not None]
    devices = [m[DEVICE] for m in measured if m[DEVICE] is not None]
    return {HOST: min(hosts) if hosts else None, DEVICE: min(devices) if devices else None}


def refusal(plan: MemoryPlan, available: dict[str, int | None], headroom: float) -> str:
    """The error of a plan that does not fit: each short memory's peak against its share, the table, the fixes."""
    short = shortfalls(plan, available, headroom)
    lines = ["the run needs more memory per rank than a rank has (memory preflight, distributed.memory_check):"]
    fixes: list[str] = []
    for memory in short:
        need, moment = plan.peak(memory)
        lines.append(f"  {memory} memory: peak {gib(need)} GiB at {moment}"
                     + (f" × headroom {headroom:g}" if headroom != 1 else "")
                     + f" > {gib(available[memory])} GiB available per rank")
        fixes += plan.fixes(memory, moment)
    lines += [render(plan, available, headroom), "to make it fit:"]
    lines += [f"  - {fix}" for fix in dict.fromkeys(fixes)]
    lines.append("or skip this check with distributed.memory_check=false (docs/cluster.md, section 3.1)")
    return "\n".join(lines)


def check_memory(config: TrainConfig, dist: Dist, engine: str, device: torch.device, dtype: torch.dtype,
                 ds_config: dict[str, Any] | None) -> MemoryPlan | None:
    """Refuse a run whose estimated peak per rank exceeds the memory a rank has (`InsufficientMemory`, on every
    rank alike); the plan it checked, or None with `distributed.memory_check` off. Collective: every rank calls
    it together."""
    if not config.distributed.memory_check:
        return None
    plan = plan_of_run(config, engine, dist.world_size, device, dtype, ds_config)
    available = share_per_rank(dist.all_gather(measure(device)))
    headroom = config.distributed.memory_headroom
    if shortfalls(plan, available, headroom):
        raise InsufficientMemory(refusal(plan, available, headroom))
    for memory in plan.memories():
        need, moment = plan.peak(memory)
        have = available.get(memory)
        log.info("memory plan: %s peak %s GiB per rank at %s, %s GiB available (cllm4rec plan-memory prints the "
                 "terms)", memory, gib(need), moment, "unknown" if have is None else gib(have))
    return plan


def planned_dtype(config: TrainConfig, device: torch.device, ds: tuple[Path, dict[str, Any]] | None) -> torch.dtype:
    """The backbone dtype a run would pick (`engine_setup.model_dtype`); planning a GPU run on a machine without
    one, `model.dtype: auto` of the plain engine is taken as bf16."""
    if device.type == "cuda" and not torch.cuda.is_available() and ds is None and config.model.dtype == "auto":
        return torch.bfloat16
    return model_dtype(config, device, ds)


def plan_command(config: TrainConfig, ranks: int, catalogue: tuple[int, int] | None = None,
                 gpu_gib: float | None = None, host_gib: float | None = None) -> tuple[str, bool]:
    """(`cllm4rec plan-memory`'s table, whether the run fits) for `config` on `ranks` ranks of its device. The
    distributed engine is planned with `distributed.engine: deepspeed`, or `auto` with several ranks or under a
    launcher. Available per rank: `gpu_gib` / `host_gib` GiB where given, else measured here (host memory
    divided by `ranks`)."""
    wanted = config.distributed.engine
    distributed = wanted == "deepspeed" or (wanted == "auto" and (ranks > 1 or launched()))
    engine = planned_engine(config, distributed)
    device = pick_device(config.device)
    ds = None
    if engine == "zero3":
        path = resolve_ds_config(config.distributed.ds_config, device)
        ds = path, fill_ds_config(path, config.pretrain.batch_size, ranks)
    plan = plan_of_run(config, engine, ranks, device, planned_dtype(config, device, ds), ds[1] if ds else None,
                       catalogue)
    here = share_per_rank([measure(device)] * ranks)  # every rank on this machine
    given = {DEVICE: gpu_gib, HOST: host_gib}
    available = {m: here[m] if given[m] is None else round(given[m] * GIB) for m in (DEVICE, HOST)}
    headroom = config.distributed.memory_headroom
    return render(plan, available, headroom), not shortfalls(plan, available, headroom)
