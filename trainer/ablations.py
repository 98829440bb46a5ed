"""The paper's ablations, one record each: the config switch `ablation=<key>`, the model's name in the
results tables, the config keys it sets, whether `cllm4rec reproduce` trains it by default, and the
colour of its bars in reproduce's table.png. Adding an ablation is adding one record here."""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

NONE = "none"  # the full method: CLLM4Rec itself, nothing ablated
LLM_COLOR = "tab:orange"  # bars of the LLM-based rows other than CLLM4Rec


@dataclass(frozen=True)
class Ablation:
    """One ablation; `overrides` (e.g. {"pretrain.reorder": False}) are applied after the recipe and the
    command-line overrides, so they win over both."""

    key: str
    name: str
    overrides: Mapping[str, Any]
    reproduce_default: bool
    color: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))


ABLATIONS: dict[str, Ablation] = {a.key: a for a in (
    Ablation(NONE, "CLLM4Rec", {}, reproduce_default=False, color="tab:red"),
    Ablation("scratch", "LLM-Scratch", {"model.random_init": True, "model.train_backbone": "full"},
             reproduce_default=True, color=LLM_COLOR),
    Ablation("cf", "LLM-CF", {"pretrain.content": False, "pretrain.lambda_c": 0.0, "finetune.lambda_c": 0.0},
             reproduce_default=True, color=LLM_COLOR),
    Ablation("ftall", "LLM-FtAll", {"model.train_backbone": "full"}, reproduce_default=False, color=LLM_COLOR),
    Ablation("ftall-lora", "LLM-FtAll (LoRA)", {"model.train_backbone": "lora"}, reproduce_default=True,
             color=LLM_COLOR),
    Ablation("fixord", "LLM-FixOrd", {"pretrain.reorder": False}, reproduce_default=True, color=LLM_COLOR),
    Ablation("prerec", "LLM-PreRec", {"finetune.enabled": False}, reproduce_default=True, color=LLM_COLOR),
)}


def ablation_rows() -> list[Ablation]:
    """The ablations proper (CLLM4Rec itself left out), in registry order: the rows `--ablations` may name."""
    return [a for a in ABLATIONS.values() if a.key != NONE]


def reproduce_defaults() -> tuple[str, ...]:
    """The keys `cllm4rec reproduce` trains when `--ablations` is not given."""
    return tuple(a.key for a in ablation_rows() if a.reproduce_default)
