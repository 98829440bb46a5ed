"""One training epoch over a batch stream, with a progress bar, per-epoch loss summaries reduced over
ranks, and optional checkpoints every `checkpoint_every` steps inside the epoch."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from tqdm.auto import tqdm

from trainer.data import Batch
from trainer.engine import Engine

SUM_KEYS = ("lm_sum", "lm_count", "mr_sum", "prior_sum", "loss", "tokens")


@dataclass
class EpochProgress:
    """Where an epoch stands: steps done and this rank's running sums (saved in mid-epoch checkpoints)."""

    step: int = 0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SUM_KEYS, 0.0))
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"step": self.step, "sums": dict(self.sums), "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict) -> "EpochProgress":
        return cls(int(data["step"]), {k: float(data["sums"][k]) for k in SUM_KEYS}, float(data["seconds"]))


def run_epoch(
    engine: Engine,
    task: str,
    step_name: str,
    batches: Iterator[Batch],
    *,
    total: int,
    max_steps: int | None,
    lambda_c: float,
    lambda_l: float,
    desc: str,
    progress: bool = True,
    resume: EpochProgress | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[EpochProgress], None] | None = None,
) -> dict[str, float]:
    """Train one epoch; returns lm_loss (token-mean over the epoch and all ranks), mr_loss and
    prior_loss (the λ-scaled terms, global per-step mean), loss, steps, tokens (non-padding, all
    ranks), tokens_per_s, seconds.

    resume: continue after `resume.step` steps (their batches are drawn and skipped, so the stream
    is the one an uninterrupted epoch sees). Every `checkpoint_every` steps (0: never) the progress
    is handed to `on_checkpoint`, on every rank.
    """
    steps = total if max_steps is None else min(total, max_steps)
    state = resume or EpochProgress()
    stream = itertools.islice(batches, state.step, steps)  # draws and discards the finished steps
    start = time.perf_counter() - state.seconds
    bar = tqdm(stream, total=steps, initial=state.step, desc=desc, disable=not progress, leave=False)
    for batch in bar:
        out = engine.train_step(task, batch, step_name)
        for key in SUM_KEYS[:-1]:
            state.sums[key] += out[key]
        state.sums["tokens"] += float(batch["lengths"].sum()) * float(batch.get("weight", 1.0))
        state.step += 1
        bar.set_postfix(lm=f"{state.sums['lm_sum'] / max(state.sums['lm_count'], 1):.3f}", mr=f"{lambda_c * out['mr_sum']:.3f}")
        if checkpoint_every and on_checkpoint and state.step % checkpoint_every == 0 and state.step < steps:
            state.seconds = time.perf_counter() - start
            on_checkpoint(state)
    seconds = time.perf_counter() - start
    totals = dict(zip(SUM_KEYS, engine.dist.all_reduce_sum([state.sums[k] for k in SUM_KEYS])))
    done = max(state.step, 1)
    return {
        "lm_loss": totals["lm_sum"] / max(totals["lm_count"], 1.0),
        "mr_loss": lambda_c * totals["mr_sum"] / done,
        "prior_loss": lambda_l * totals["prior_sum"] / done,
        "loss": totals["loss"] / done,
        "steps": float(done),
        "tokens": totals["tokens"],
        "tokens_per_s": totals["tokens"] / max(seconds, 1e-9),
        "seconds": seconds,
    }
