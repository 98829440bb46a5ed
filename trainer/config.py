"""Typed training configuration: dataclasses loaded from YAML, with `section.key=value` overrides.

Unknown keys (in YAML or overrides) and values of the wrong type are errors that name the key.
`ablation` is a one-line switch for the paper's ablations; it sets the fields listed in ABLATIONS
after loading, and the resolved config (what actually runs) is what gets saved and logged.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECIPES_DIR = Path(__file__).parent / "recipes"


class ConfigError(ValueError):
    """A configuration problem; the message names the key or file."""


@dataclass
class DataConfig:
    dataset: str = "ml-100k"  # processed dataset folder, or an embedded name (ml-100k) prepared on demand
    split_seed: int = 0  # split seed when an embedded dataset is prepared on demand
    max_items: int = 512  # items per document at most (random ones dropped; the closing prompt is kept)
    max_main_tokens: int = 128  # content documents: main-part text cap in tokens
    biographies: bool = True
    item_texts: bool = True
    reviews: bool = True
    shards: str | None = None  # WebDataset shard folder of this dataset (ray_jobs/shard_corpora.py): epochs stream from it
    shuffle_buffer: int = 1000  # samples in the shard reader's shuffle buffer
    skip_corrupt_shards: bool = False  # skip (and count) corrupted shards instead of stopping at the first


@dataclass
class ModelConfig:
    backbone: str = "smollm2-135m"  # short name, HF folder, .gguf file or hub id
    dtype: str = "auto"  # auto (bf16 where the CPU/GPU has it), bfloat16, float32
    attention: str = "auto"  # backbone attention kernel: auto (eager on CPU, sdpa on GPU), eager, sdpa
    compile: bool = False  # torch.compile the backbone body (plain engine): minutes of compiling, then faster steps
    activation_checkpointing: bool = False  # recompute each backbone layer in backward: less memory, one more forward
    random_init: bool = False  # LLM-Scratch: same architecture, random weights
    train_backbone: str = "none"  # none | full (LLM-FtAll) | lora (LLM-FtAll with a LoRA adapter)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=list)  # empty: the attention projections
    dropout: bool = False  # backbone dropout during training (off: deterministic, eval-mode backbone)
    init_std: float | None = None  # ID table init std; None: std of the backbone's word embeddings
    content_init: str = "collab"  # collab: content tables start equal to the collaborative ones; random: independent
    content_init_from_text: bool = False  # then overwrite content rows with the mean word embedding of the entity's text


@dataclass
class PretrainConfig:
    warmup_epochs: int = 10  # content LLM alone first
    rounds: int = 100  # alternating (L-step, C-step) rounds
    lr: float = 1e-3
    batch_size: int = 20
    lambda_c: float = 1.0
    lambda_l: float = 0.0
    content: bool = True  # False: LLM-CF (no content LLM, no MR term)
    reorder: bool = True  # False: LLM-FixOrd (chronological item order)
    max_steps_per_epoch: int | None = None  # cap for smoke runs


@dataclass
class FinetuneConfig:
    enabled: bool = True  # False: LLM-PreRec (rank with the pretrained collaborative head)
    epochs: int = 150
    lr: float = 1e-4
    batch_size: int = 20
    mask_mode: str = "fixed"  # fixed: drop max(1, floor(ratio*n)); bernoulli: drop each with p=ratio
    mask_ratio: float = 0.2
    target: str = "all"  # all training items, or only the dropped ones
    content_epoch: bool = True  # one content-LLM epoch after every finetuning epoch
    patience: int = 10  # epochs without validation improvement before stopping
    max_steps_per_epoch: int | None = None


@dataclass
class EvalConfig:
    batch_size: int = 32
    recall_ks: list[int] = field(default_factory=lambda: [20, 40])
    ndcg_ks: list[int] = field(default_factory=lambda: [100])
    max_users: int | None = None  # evaluate a prefix of the users (smoke runs)


@dataclass
class BaselineConfig:
    multivae: bool = True
    multivae_epochs: int = 200
    ease: bool = True


@dataclass
class TrackingConfig:
    mlflow: bool = True
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/../mlflow.db
    experiment: str = "cllm4rec"
    run_name: str | None = None
    parent_run_id: str | None = None  # nest this training's MLflow run under that run (set by `cllm4rec sweep`)


@dataclass
class DistributedConfig:
    engine: str = "auto"  # auto (DeepSpeed under a launcher, i.e. WORLD_SIZE set; else plain), plain, deepspeed
    ds_config: str = "auto"  # zero3_bf16 | zero3_offload | zero3_cpu | a .json path; auto: zero3_bf16 on GPUs, zero3_cpu on CPUs


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # also checkpoint inside an epoch every N steps (0: only at the end of each epoch)
    keep: int = 2  # complete checkpoints kept (the newest; the one `latest` names is always kept)


@dataclass
class TrainConfig:
    name: str = "cllm4rec"
    seed: int = 0
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:N
    output_dir: str = "runs/{name}"
    ablation: str = "none"  # none | scratch | cf | ftall | ftall-lora | fixord | prerec
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))


ABLATIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "scratch": {"model.random_init": True, "model.train_backbone": "full"},
    "cf": {"pretrain.content": False, "pretrain.lambda_c": 0.0},
    "ftall": {"model.train_backbone": "full"},
    "ftall-lora": {"model.train_backbone": "lora"},
    "fixord": {"pretrain.reorder": False},
    "prerec": {"finetune.enabled": False},
}
CHOICES = {
    "ablation": tuple(ABLATIONS),
    "model.dtype": ("auto", "bfloat16", "float32"),
    "model.attention": ("auto", "eager", "sdpa"),
    "distributed.engine": ("auto", "plain", "deepspeed"),
    "model.train_backbone": ("none", "full", "lora"),
    "model.content_init": ("collab", "random"),
    "finetune.mask_mode": ("fixed", "bernoulli"),
    "finetune.target": ("all", "dropped"),
}


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return `value` coerced to `annotation` (int → float allowed), or raise naming `key`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is list:
        (inner,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if annotation in (int, float, str) and (not isinstance(value, annotation) or isinstance(value, bool) and annotation is not bool):
        raise ConfigError(f"config key '{key}': expected {annotation.__name__}, got {value!r}")
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _apply(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Set fields of dataclass `obj` from a nested dict, recursing into sub-sections."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<top>'}': expected a mapping, got {values!r}")
    hints = _hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, f"{full}.")
            continue
        value = _check_type(full, value, hints[key])
        if full in CHOICES and value not in CHOICES[full]:
            raise ConfigError(f"config key '{full}': {value!r} is not one of {', '.join(CHOICES[full])}")
        setattr(obj, key, value)


def parse_override(text: str) -> dict[str, Any]:
    """'pretrain.lambda_c=0.1' → {'pretrain': {'lambda_c': 0.1}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value (e.g. pretrain.lambda_c=0.5)")
    key, raw = text.split("=", 1)
    return _nested(key.strip(), yaml.safe_load(raw) if raw.strip() else None)


def _nested(key: str, value: Any) -> dict[str, Any]:
    """'a.b.c', v → {'a': {'b': {'c': v}}}."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def recipe_path(recipe: str) -> Path:
    """A shipped recipe name ('quick', 'paper') or a path to a YAML file."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        return path
    shipped = RECIPES_DIR / f"{recipe}.yaml"
    if not shipped.is_file():
        names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown recipe {recipe!r}; shipped recipes: {', '.join(names)}, or pass a .yaml file")
    return shipped


def load_config(recipe: str | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults ← recipe YAML ← overrides ← ablation presets; returns the resolved config."""
    config = TrainConfig()
    if recipe:
        path = recipe_path(recipe)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: malformed YAML: {err}") from None
        try:
            _apply(config, values)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    for text in overrides:
        _apply(config, parse_override(text))
    for key, value in ABLATIONS[config.ablation].items():
        _apply(config, _nested(key, value))
    return config


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved with `config_to_dict` (strict: unknown keys are errors)."""
    config = TrainConfig()
    _apply(config, values)
    return config


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1} (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
