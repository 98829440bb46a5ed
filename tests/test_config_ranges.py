"""Every numeric config key is range-checked when the config is loaded; the error names the key, the value
and the allowed range (trainer/config.py, RANGES)."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from trainer.ablations import ABLATIONS
from trainer.config import ConfigError, TrainConfig, config_to_dict, flatten
from trainer.config_checks import RANGES
from trainer.config_loading import RECIPES_DIR, load_config

RECIPES = [None, *sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))]


@pytest.mark.parametrize(("override", "key", "value", "allowed"), [
    ("finetune.batch_size=-4", "finetune.batch_size", "-4", "an integer ≥ 1"),
    ("finetune.batch_size=0", "finetune.batch_size", "0", "an integer ≥ 1"),
    ("pretrain.batch_size=0", "pretrain.batch_size", "0", "an integer ≥ 1"),
    ("pretrain.lambda_c=-1", "pretrain.lambda_c", "-1.0", "a number ≥ 0"),
    ("pretrain.lambda_l=-0.5", "pretrain.lambda_l", "-0.5", "a number ≥ 0"),
    ("finetune.mask_ratio=1.5", "finetune.mask_ratio", "1.5", "a number in [0, 1]"),
    ("finetune.mask_ratio=-0.1", "finetune.mask_ratio", "-0.1", "a number in [0, 1]"),
    ("pretrain.lr=0", "pretrain.lr", "0.0", "a number > 0"),
    ("pretrain.lr=nan", "pretrain.lr", "nan", "a number > 0"),
    ("finetune.lr=inf", "finetune.lr", "inf", "a number > 0"),
    ("finetune.lr=-1e-3", "finetune.lr", "-0.001", "a number > 0"),
    ("pretrain.content_lr=0", "pretrain.content_lr", "0.0", "null or a number > 0"),
    ("finetune.lambda_c=.nan", "finetune.lambda_c", "nan", "null or a number ≥ 0"),
    ("eval.recall_ks=[20, 0]", "eval.recall_ks[1]", "0", "an integer ≥ 1"),
    ("eval.ndcg_ks=[-5]", "eval.ndcg_ks[0]", "-5", "an integer ≥ 1"),
    ("eval.batch_size=0", "eval.batch_size", "0", "an integer ≥ 1"),
    ("eval.max_users=0", "eval.max_users", "0", "null or an integer ≥ 1"),
    ("finetune.epochs=0", "finetune.epochs", "0", "an integer ≥ 1 (with finetune.enabled"),
    ("finetune.patience=0", "finetune.patience", "0", "an integer ≥ 1"),
    ("pretrain.rounds=-1", "pretrain.rounds", "-1", "an integer ≥ 0"),
    ("pretrain.warmup_epochs=-1", "pretrain.warmup_epochs", "-1", "an integer ≥ 0"),
    ("pretrain.max_steps_per_epoch=0", "pretrain.max_steps_per_epoch", "0", "null or an integer ≥ 1"),
    ("finetune.lr_warmup_steps=-1", "finetune.lr_warmup_steps", "-1", "an integer ≥ 0"),
    ("data.max_items=0", "data.max_items", "0", "an integer ≥ 1"),
    ("data.max_main_tokens=0", "data.max_main_tokens", "0", "an integer ≥ 1"),
    ("model.init_std=0", "model.init_std", "0.0", "null or a number > 0"),
    ("model.init_std=-inf", "model.init_std", "-inf", "null or a number > 0"),
    ("model.lora_dropout=1", "model.lora_dropout", "1.0", "a number in [0, 1)"),
    ("model.lora_r=0", "model.lora_r", "0", "an integer ≥ 1"),
    ("baselines.multivae_epochs=0", "baselines.multivae_epochs", "0", "an integer ≥ 1"),
    ("checkpoint.keep=0", "checkpoint.keep", "0", "an integer ≥ 1"),
    ("checkpoint.every_steps=-1", "checkpoint.every_steps", "-1", "an integer ≥ 0"),
    ("tracking.log_every_steps=-1", "tracking.log_every_steps", "-1", "an integer ≥ 0"),
    ("seed=-1", "seed", "-1", "an integer ≥ 0"),
])
def test_out_of_range_values_name_the_key_value_and_range(override, key, value, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert f"'{key}'" in message and f"got {value}" in message and f"must be {allowed}" in message, message


def test_boundary_values_that_the_method_allows_load():
    config = load_config(None, ["pretrain.rounds=0", "pretrain.warmup_epochs=0", "pretrain.lambda_c=0", "pretrain.lr_warmup_steps=0",
                                "finetune.mask_ratio=0", "finetune.content_lr=null", "model.init_std=null", "checkpoint.every_steps=0",
                                "tracking.log_every_steps=0", "finetune.max_steps_per_epoch=1", "eval.recall_ks=[1]"])
    assert config.pretrain.rounds == 0 and config.finetune.mask_ratio == 0.0
    assert load_config(None, ["finetune.mask_ratio=1"]).finetune.mask_ratio == 1.0
    # finetune.epochs may be 0 only when finetuning is off (LLM-PreRec)
    assert load_config(None, ["finetune.enabled=false", "finetune.epochs=0"]).finetune.epochs == 0
    with pytest.raises(ConfigError, match=r"'finetune\.epochs': must be an integer ≥ 0, got -1"):
        load_config(None, ["finetune.enabled=false", "finetune.epochs=-1"])


def test_a_recipe_file_value_out_of_range_names_the_file_and_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("finetune:\n  batch_size: -4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'finetune\.batch_size': must be an integer ≥ 1, got -4"):
        load_config(str(recipe))


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_every_shipped_recipe_and_ablation_preset_loads(recipe, ablation):
    config = load_config(recipe, [f"ablation={ablation}"])
    assert config.ablation == ablation
    values = flatten(config_to_dict(config))
    assert {key: values[key] for key in ABLATIONS[ablation].overrides} == dict(ABLATIONS[ablation].overrides)


def _numeric_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted keys whose type is int or float (optionally null, or a list of them)."""
    keys = []
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            keys += _numeric_keys(hint, f"{prefix}{name}.")
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if typing.get_origin(hint) is list:
            args = list(typing.get_args(hint))
        if any(a in (int, float) for a in args):
            keys.append(f"{prefix}{name}")
    return keys


def test_every_numeric_key_has_a_range():
    numeric = _numeric_keys(TrainConfig)
    assert "finetune.batch_size" in numeric and "eval.recall_ks" in numeric and "model.init_std" in numeric
    assert sorted(numeric) == sorted(RANGES)
