"""Reading a training config: a recipe (a shipped name or a YAML file) ← `section.key=value` overrides ←
the ablation's keys, checked as it goes (docs/configuration.md).

Unknown keys (in YAML or overrides) and values of the wrong type are errors that name the key; so
are values outside their choices and ranges (trainer/config_checks.py).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from trainer.ablations import ABLATIONS
from trainer.config import ConfigError, ServingConfig, TrainConfig
from trainer.config_checks import CHOICES, check_config

RECIPES_DIR = Path(__file__).parent / "recipes"


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return `value` coerced to `annotation` (int → float allowed), or raise naming `key`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return {_check_type(f"{key} (a key)", k, key_type): _check_type(f"{key}.{k}", v, value_type) for k, v in value.items()}
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


def shipped_recipes() -> list[str]:
    """The names of the recipes in trainer/recipes/, sorted."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(recipe: str) -> Path:
    """A shipped recipe name (`shipped_recipes`) or a path to a YAML file."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        return path
    shipped = RECIPES_DIR / f"{recipe}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"unknown recipe {recipe!r}; shipped recipes: {', '.join(shipped_recipes())}, "
                          "or pass a .yaml file")
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
    for key, value in ABLATIONS[config.ablation].overrides.items():
        _apply(config, _nested(key, value))
    check_config(config)
    return config


def override_serving(serving: ServingConfig, values: dict[str, Any]) -> ServingConfig:
    """A copy of `serving` with `values` (e.g. {'max_records': 64}) applied, checked as the keys serving.*
    (only these: a saved model's other keys are not re-checked against today's ranges)."""
    config = TrainConfig(serving=dataclasses.replace(serving))
    _apply(config, {"serving": values})
    check_config(config)
    return config.serving


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved with `config_to_dict` (strict: unknown keys are errors)."""
    config = TrainConfig()
    _apply(config, values)
    return config
