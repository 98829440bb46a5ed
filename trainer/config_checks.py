"""Which values each config key admits (docs/configuration.md): the choices of the string keys, the
ranges of the numeric ones, and the checks a loaded config passes; errors name the key."""
from __future__ import annotations

import math
import typing
from typing import Any

from trainer.ablations import ABLATIONS
from trainer.config import ITEM_ALIGNMENTS, ConfigError, EvalConfig, TrainConfig, config_to_dict, flatten

CHOICES = {
    "ablation": tuple(ABLATIONS),
    "model.dtype": ("auto", "bfloat16", "float32"),
    "model.attention": ("auto", "eager", "sdpa"),
    "model.head_gradient_dtype": ("auto", "bfloat16", "float32"),
    "distributed.engine": ("auto", "plain", "deepspeed"),
    "distributed.table_sharding": ("zero3", "rows"),
    "model.train_backbone": ("none", "full", "lora"),
    "model.content_init": ("collab", "random"),
    "finetune.mask_mode": ("fixed", "bernoulli", "uniform"),
    "finetune.target": ("all", "dropped"),
    "pretrain.mr_reduction": ("sum", "mean"),
    "pretrain.collab_from_content_tables": ("both", "users"),
    "model.table_optimizer": ("adam", "row_adam"),
    "pretrain.lr_schedule": ("constant", "cosine"),
    "finetune.lr_schedule": ("constant", "cosine"),
    "incremental.align": ITEM_ALIGNMENTS,
}


class Range(typing.NamedTuple):
    """The values a numeric key admits: `low` ≤ value (or < with `above`), value ≤ `high` (or < with `below`);
    NaN and ±inf never. `integer` only words the message (the type check has run). With `when` (a bool key)
    the range applies while that key is true, and `otherwise` while it is false. A list key: each element."""

    low: float | None = None
    high: float | None = None
    above: bool = False
    below: bool = False
    integer: bool = True
    nullable: bool = False
    when: str | None = None
    otherwise: Range | None = None

    def admits(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or (value < self.high if self.below else value <= self.high)

    def describe(self) -> str:
        """E.g. 'an integer ≥ 1', 'a number in [0, 1]', 'null or a number > 0'."""
        kind = "an integer" if self.integer else "a number"
        low = None if self.low is None else f"{self.low:g}"
        high = None if self.high is None else f"{self.high:g}"
        if low is not None and high is not None:
            text = f"{kind} in {'(' if self.above else '['}{low}, {high}{')' if self.below else ']'}"
        elif low is not None:
            text = f"{kind} {'>' if self.above else '≥'} {low}"
        elif high is not None:
            text = f"{kind} {'<' if self.below else '≤'} {high}"
        else:
            text = kind
        text = f"null or {text}" if self.nullable else text
        if self.when is not None:
            text += f" (with {self.when}; {self.otherwise.describe()} without)"
        return text


def _count(least: int = 0, nullable: bool = False) -> Range:
    return Range(least, nullable=nullable)


def _positive(nullable: bool = False) -> Range:
    return Range(0, above=True, integer=False, nullable=nullable)


def _weight() -> Range:
    return Range(0, integer=False)


# Every numeric key (and each element of a numeric list), checked by load_config; a test keeps it complete.
RANGES: dict[str, Range] = {
    "seed": _count(0),
    "data.split_seed": _count(0),
    "data.max_items": _count(1),
    "data.max_main_tokens": _count(1),
    "data.shuffle_buffer": _count(0),
    "data.bucket_window": _count(1),
    "model.lora_r": _count(1),
    "model.lora_alpha": _count(1),
    "model.lora_dropout": Range(0, 1, below=True, integer=False),
    "model.init_std": _positive(nullable=True),
    "pretrain.warmup_epochs": _count(0),
    "pretrain.rounds": _count(0),
    "pretrain.lr": _positive(),
    "pretrain.content_lr": _positive(nullable=True),
    "pretrain.collab_from_content_token_alpha": _positive(nullable=True),
    "pretrain.lr_warmup_steps": _count(0),
    "pretrain.batch_size": _count(1),
    "pretrain.lambda_c": _weight(),
    "pretrain.lambda_l": _weight(),
    "pretrain.max_steps_per_epoch": _count(1, nullable=True),
    "finetune.epochs": Range(1, when="finetune.enabled", otherwise=_count(0)),
    "finetune.lr": _positive(),
    "finetune.content_lr": _positive(nullable=True),
    "finetune.lr_warmup_steps": _count(0),
    "finetune.lambda_c": Range(0, integer=False, nullable=True),
    "finetune.batch_size": _count(1),
    "finetune.mask_ratio": Range(0, 1, integer=False),
    "finetune.patience": _count(1),
    "finetune.max_steps_per_epoch": _count(1, nullable=True),
    "eval.batch_size": _count(1),
    "eval.recall_ks": _count(1),
    "eval.ndcg_ks": _count(1),
    "eval.max_users": _count(1, nullable=True),
    "baselines.multivae_epochs": _count(1),
    "tracking.log_every_steps": _count(0),
    "checkpoint.every_steps": _count(0),
    "checkpoint.keep": _count(1),
    "serving.top_m": _count(1),
    "serving.max_top_m": _count(1),
    "serving.max_records": _count(1),
    "serving.max_history": _count(0),
    "incremental.passes": _count(0),
    "incremental.lr": _positive(),
    "distributed.memory_headroom": _positive(),
}


def check_config(config: TrainConfig) -> None:
    """The checks a loaded config passes: selection metrics, serving limits, RANGES."""
    _check_selection(config.eval)
    _check_ranges(config)
    if config.serving.top_m > config.serving.max_top_m:
        raise ConfigError(f"config key 'serving.top_m': must be at most serving.max_top_m = "
                          f"{config.serving.max_top_m}, got {config.serving.top_m}")


def _check_ranges(config: TrainConfig) -> None:
    """Numbers that the types allow but the method does not (RANGES); the error names the key."""
    values = flatten(config_to_dict(config))
    for key, spec in RANGES.items():
        if spec.when is not None and not values[spec.when]:
            spec = spec.otherwise
        value = values[key]
        items = [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(key, value)]
        for name, item in items:
            if not spec.admits(item):
                raise ConfigError(f"config key '{name}': must be {spec.describe()}, got {item!r}")
    for key, value in values.items():  # a float key missing from RANGES is still never NaN or infinite
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{key}': must be a finite number, got {value!r}")


def _check_selection(cfg: EvalConfig) -> None:
    unknown = [m for m in cfg.selection_metrics if m not in cfg.columns()]
    if unknown:
        raise ConfigError(f"config key 'eval.selection_metrics': {', '.join(unknown)} not among the reported "
                          f"metrics ({', '.join(cfg.columns())}); add the cut-off to eval.recall_ks or eval.ndcg_ks")
