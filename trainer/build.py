"""Build the pieces of a run from its config: dataset, backbone (+ LoRA), model, tokenizer, corpora."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cllm4rec.backbone import load_backbone
from cllm4rec.model import CLLM4Rec, whole_table
from cllm4rec.rms_norm import fuse_rms_norms
from cllm4rec.row_shards import RowSlices
from cllm4rec.tokenization import IdTokenizer
from data_prep.errors import DataPrepError
from data_prep.prepare import default_output, is_plain_name, prepare
from data_prep.processed import ProcessedDataset, dataset_hash, load_processed, read_meta
from trainer.config import ModelConfig, TrainConfig
from trainer.data import Corpora, epoch_rng
from trainer.zero_build import PartitionedBuild

log = logging.getLogger(__name__)
EMBEDDED_DATASETS = ("ml-100k",)
# How `build_model` lays out the ID tables: a filled ZeRO-3 DeepSpeed config (the backbone and the tables built
# straight into its partitions), this rank's rows for the row-sharded engine, or None (whole, on every rank).
TableLayout = dict[str, Any] | RowSlices | None


def resolve_dataset(ref: str, split_seed: int = 0) -> Path:
    """A processed dataset folder. A path is used as it is. An embedded name is prepared in the cache on
    demand with `split_seed`. Any other bare name is a dataset `cllm4rec prepare … --name <name>` wrote to
    the cache: with split seed N ≠ 0, the folder `<name>-split<N>` (what `--seed N` writes) if there is one,
    else `<name>`, and the folder must hold split N; with 0, the default, `<name>` whatever its split."""
    path = Path(ref).expanduser()
    if path.is_dir() or not is_plain_name(ref):
        return path
    if ref in EMBEDDED_DATASETS:
        return _prepare_embedded(ref, split_seed)
    looked = list(dict.fromkeys([default_output(ref, split_seed), default_output(ref)]))
    out = next((folder for folder in looked if folder.is_dir()), None)
    prepare_hint = f"`cllm4rec prepare … --name {ref}{f' --seed {split_seed}' if split_seed else ''}`"
    if out is None:
        raise DataPrepError(f"data.dataset={ref}: neither a folder here nor a prepared dataset in the cache "
                            f"(looked in {' and '.join(map(str, looked))}); prepare it with {prepare_hint} "
                            "or give a path")
    prepared_seed = read_meta(out)["split"]["seed"]
    if split_seed and prepared_seed != split_seed:
        raise DataPrepError(f"data.dataset={ref}: {out} holds split seed {prepared_seed}, not data.split_seed="
                            f"{split_seed}; prepare that split with {prepare_hint}")
    return out


def _prepare_embedded(name: str, split_seed: int) -> Path:
    """The cache folder of the embedded dataset `name`, prepared unless it is there with this split seed."""
    from data_prep.assets import fetch_ml100k_raw
    from data_prep.readers import read_movielens

    out = default_output(name, split_seed)
    if not (out / "meta.json").is_file() or read_meta(out)["split"]["seed"] != split_seed:
        prepare(read_movielens(fetch_ml100k_raw(), name), out, seed=split_seed)
    return out


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """Backbone compute dtype: 'auto' → bf16 where the hardware has it, else fp32."""
    if name == "bfloat16":
        return torch.bfloat16
    if name == "float32":
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def pick_head_gradient_dtype(name: str, backbone_dtype: torch.dtype) -> torch.dtype:
    """Dtype of the item head's gradient products: 'auto' → bf16 with a bf16 backbone, else fp32."""
    if name == "auto":
        return torch.bfloat16 if backbone_dtype == torch.bfloat16 else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def pick_attention(name: str, device: torch.device) -> str:
    """Backbone attention kernel: 'auto' → eager on CPU (1.1-1.6x faster than PyTorch's SDPA for
    SmolLM2 in bf16 on 2 cores, equal in fp32: benchmarks/throughput.py, docs/performance.md), else sdpa."""
    if name != "auto":
        return name
    return "eager" if device.type == "cpu" else "sdpa"


def build_backbone(cfg: ModelConfig, dtype: torch.dtype, device: torch.device = torch.device("cpu"),
                   lora_seed: int = 0):
    """(backbone, HF tokenizer, resolved reference); LoRA adapters attached when asked for, drawn from
    `lora_seed` (the same adapters whether the backbone was built whole or into ZeRO-3 partitions, which
    draw differently from the global generator; PEFT reads a partitioned layer's shape from the module)."""
    from data_prep.assets import resolve_backbone

    ref = resolve_backbone(cfg.backbone)
    backbone, hf_tokenizer = load_backbone(ref, dtype=dtype, random_init=cfg.random_init,
                                           attention=pick_attention(cfg.attention, device))
    if cfg.fused_norm:
        fused = fuse_rms_norms(backbone)
        log.debug("fused %d RMSNorm modules", fused)
    if cfg.train_backbone == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules or None,
            bias="none",
        )
        torch.manual_seed(lora_seed)
        backbone = get_peft_model(backbone, lora)
    elif cfg.train_backbone == "full":
        backbone.requires_grad_(True)
    return backbone, hf_tokenizer, ref


@torch.no_grad()
def load_weights(model: CLLM4Rec, tables: dict[str, torch.Tensor], backbone: dict[str, torch.Tensor] | None) -> None:
    """Copy saved ID tables (and trained backbone / LoRA weights, if any) into `model` in place."""
    for name, table in tables.items():
        getattr(model, name).copy_(table)
    params = dict(model.backbone.named_parameters())
    for name, tensor in (backbone or {}).items():
        params[name].copy_(tensor)


def text_init_ids(config: ModelConfig, corpora: Corpora) -> dict[tuple[str, int], list[int]]:
    """The word ids each content row starts from (`CLLM4Rec.init_content_from_text`): with
    `content_init_from_text`, the entity's text (and reviews, with `content_init_reviews`); else none."""
    return corpora.entity_text_ids(reviews=config.content_init_reviews) if config.content_init_from_text else {}


@dataclass
class RunParts:
    dataset: ProcessedDataset
    dataset_path: Path
    dataset_hash: str
    model: CLLM4Rec
    tokenizer: IdTokenizer
    corpora: Corpora
    backbone_ref: str


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(config: TrainConfig, n_users: int, n_items: int, device: torch.device, dtype: torch.dtype,
                layout: TableLayout = None) -> tuple[CLLM4Rec, Any, str]:
    """(model, HF tokenizer, resolved backbone reference). `layout` (`TableLayout`): with a ZeRO-3 engine's
    filled DeepSpeed config the backbone and the tables are built into its partitions (trainer/zero_build.py;
    collective: every rank calls it together); with `RowSlices` each table as this rank's rows; else whole,
    on `device`."""
    ds_config = layout if isinstance(layout, dict) else None
    with PartitionedBuild.open(ds_config) if ds_config is not None else contextlib.nullcontext() as zero:
        with torch.random.fork_rng(devices=[]):  # the global RNG is left as it was
            # random backbones (LLM-Scratch) and LoRA adapters start from a stream derived from the run seed
            torch.manual_seed(int(epoch_rng(config.seed, "backbone-init").integers(2**62)))
            backbone, hf_tokenizer, ref = build_backbone(config.model, dtype, device,
                                                         int(epoch_rng(config.seed, "lora-init").integers(2**62)))
        make_table = zero.make_table if zero else layout.make_table if isinstance(layout, RowSlices) else whole_table
        with zero or contextlib.nullcontext():
            model = CLLM4Rec(
                backbone if zero else backbone.to(device),
                n_users,
                n_items,
                init_std=config.model.init_std,
                seed=config.seed,
                lambda_c=config.pretrain.lambda_c,
                lambda_l=config.pretrain.lambda_l,
                backbone_trainable=config.model.train_backbone != "none",
                backbone_dropout=config.model.dropout,
                content_init=config.model.content_init,
                head_gradient_dtype=pick_head_gradient_dtype(config.model.head_gradient_dtype, dtype),
                make_table=make_table,
            )
    return model, hf_tokenizer, ref


def builds_whole(config: TrainConfig) -> bool:
    """Whether a ZeRO-3 run builds the model whole on every rank even with `distributed.partitioned_build`: its
    tables are written whole after they are drawn (`incremental.init_from`; the row-sharded engine writes each
    rank's rows in place instead, trainer/incremental.py)."""
    return bool(config.incremental.init_from)


def build_run(config: TrainConfig, device: torch.device | None = None, dtype: torch.dtype | None = None,
              layout: TableLayout = None) -> RunParts:
    """Everything a run needs; `device` / `dtype` default to what the config resolves to; `layout`: how the
    engine wants the tables built (`build_model`; trainer.engine_setup.table_layout), whole by default."""
    device = device or pick_device(config.device)
    path = resolve_dataset(config.data.dataset, config.data.split_seed)
    dataset = load_processed(path)
    dtype = dtype or pick_dtype(config.model.dtype, device)
    model, hf_tokenizer, ref = build_model(config, dataset.n_users, dataset.n_items, device, dtype, layout)
    if config.model.activation_checkpointing:
        model.enable_activation_checkpointing()
    if config.model.compile:
        model.compile_backbone()
    tokenizer = IdTokenizer(hf_tokenizer, model.vocab_rows, dataset.n_users, dataset.n_items, add_bos=config.model.bos)
    corpora = Corpora.build(
        dataset,
        tokenizer,
        max_items=config.data.max_items,
        max_main_tokens=config.data.max_main_tokens,
        biographies=config.data.biographies,
        item_texts=config.data.item_texts,
        reviews=config.data.reviews,
        shards=Path(config.data.shards) if config.data.shards else None,
        dataset_path=path,
        shuffle_buffer=config.data.shuffle_buffer,
        skip_corrupt=config.data.skip_corrupt_shards,
        bucket_window=config.data.bucket_window,
    )
    model.init_content_from_text(text_init_ids(config.model, corpora))
    log.info("model: backbone %s (%s), %d users, %d items, K=%d", ref, dtype, dataset.n_users, dataset.n_items, model.dim)
    return RunParts(dataset, path, dataset_hash(path), model, tokenizer, corpora, ref)
