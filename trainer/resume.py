"""What a resumed run restores besides tables and optimizer state (docs/architecture.md, section 5):
the checkpoint it continues from, torch's RNG state, and the check that a checkpoint's config differs
from the run's only in the keys that may change on resume (`RESUMABLE_KEYS`)."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import torch

from trainer import checkpoint as ckpt
from trainer.config import RESUMABLE_KEYS, TrainConfig, config_to_dict, flatten
from trainer.distributed import Dist


def latest_checkpoint(checkpoints: Path, dist: Dist) -> Path | None:
    """The checkpoint a resume continues from: the latest complete one under `checkpoints` (rank 0 picks
    it, every rank gets its path), or None. Collective."""
    latest = ckpt.find_latest(checkpoints) if dist.is_main else None
    latest = dist.broadcast(str(latest) if latest else None)
    return Path(latest) if latest else None


def rng_state() -> dict[str, str]:
    """torch's RNG state(s) as base64 text (only backbone dropout draws from them)."""
    state = {"cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return state


def set_rng_state(state: dict[str, str]) -> None:
    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["cpu"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensor(state["cuda"]))


def config_differences(config: TrainConfig, saved: dict[str, Any]) -> list[str]:
    """The keys whose values differ between the run's config and a checkpoint's (`saved`, as written),
    each with both values, leaving out RESUMABLE_KEYS. A key the checkpoint lacks (added to the code
    since) counts as equal when the run holds its default."""
    current, before = flatten(config_to_dict(config)), flatten(saved)
    defaults = flatten(config_to_dict(TrainConfig()))
    return [f"{k}: checkpoint has {before.get(k)!r}, current run has {current.get(k)!r}"
            for k in sorted(set(current) | set(before))
            if before.get(k, defaults.get(k)) != current.get(k) and not k.startswith(RESUMABLE_KEYS)]
