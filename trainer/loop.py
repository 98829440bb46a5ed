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
from trainer.phases import StepKind

SUM_KEYS = ("lm_sum", "lm_count", "target_count", "mr_loss", "prior_loss", "loss", "tokens")


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
        return cls(int(data["step"]), {k: float(data["sums"].get(k, 0.0)) for k in SUM_KEYS}, float(data["seconds"]))


def rank_share(saved: list[dict[str, float]], rank: int, world: int) -> dict[str, float]:
    """This rank's running sums to continue an epoch from, out of the sums each rank of a mid-epoch
    checkpoint saved: its own when as many ranks wrote it; else (a row-sharded run resumed on another
    number of ranks) all of them summed on rank 0 and none on the others — the epoch's totals, summed
    over the ranks, are the same."""
    if len(saved) == world:
        return saved[rank]
    return {key: sum(s.get(key, 0.0) for s in saved) for key in SUM_KEYS} if rank == 0 else {}


def run_epoch(
    engine: Engine,
    step: StepKind,
    batches: Iterator[Batch],
    *,
    total: int,
    max_steps: int | None,
    desc: str,
    progress: bool = True,
    resume: EpochProgress | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[EpochProgress], None] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    step_every: int = 1,
) -> dict[str, float]:
    """Train one epoch of `step`s; returns lm_loss (token-mean over the epoch and all ranks), lm_per_target,
    mr_loss and prior_loss (the weighted terms as they enter the loss, global per-step mean), loss,
    steps, tokens (non-padding, all ranks), tokens_per_s, seconds.

    resume: continue after `resume.step` steps (their batches are drawn and skipped, so the stream
    is the one an uninterrupted epoch sees). Every `checkpoint_every` steps (0: never) the progress
    is handed to `on_checkpoint`, on every rank. Every `step_every` steps (0: never) `on_step` gets
    the steps done in this epoch and that step's lm_loss (its LM sum over its count), mr_loss and loss,
    summed over the ranks: collective, so every rank passes the same `on_step` (None or not) and
    `step_every`.
    """
    steps = total if max_steps is None else min(total, max_steps)
    state = resume or EpochProgress()
    stream = itertools.islice(batches, state.step, steps)  # draws and discards the finished steps
    start = time.perf_counter() - state.seconds
    bar = tqdm(stream, total=steps, initial=state.step, desc=desc, disable=not progress, leave=False)
    for batch in bar:
        out = engine.train_step(step, batch)
        for key in SUM_KEYS[:-1]:
            state.sums[key] += out[key]
        state.sums["tokens"] += float(batch["lengths"].sum()) * float(batch.get("weight", 1.0))
        state.step += 1
        if on_step is not None and step_every > 0 and state.step % step_every == 0:
            lm_sum, lm_count, targets, mr_loss, loss = engine.dist.all_reduce_sum(
                [out["lm_sum"], out["lm_count"], out["target_count"], out["mr_loss"], out["loss"]])
            on_step(state.step, {"lm_loss": lm_sum / max(lm_count, 1.0), "lm_per_target": lm_sum / max(targets, 1.0),
                                 "mr_loss": mr_loss, "loss": loss})
        bar.set_postfix(lm=f"{state.sums['lm_sum'] / max(state.sums['lm_count'], 1):.3f}", mr=f"{out['mr_loss']:.3f}")
        if checkpoint_every and on_checkpoint and state.step % checkpoint_every == 0 and state.step < steps:
            state.seconds = time.perf_counter() - start
            on_checkpoint(state)
    seconds = time.perf_counter() - start
    totals = dict(zip(SUM_KEYS, engine.dist.all_reduce_sum([state.sums[k] for k in SUM_KEYS])))
    done = max(state.step, 1)
    return {
        "lm_loss": totals["lm_sum"] / max(totals["lm_count"], 1.0),
        "lm_per_target": totals["lm_sum"] / max(totals["target_count"], 1.0),
        "mr_loss": totals["mr_loss"] / done,
        "prior_loss": totals["prior_loss"] / done,
        "loss": totals["loss"] / done,
        "steps": float(done),
        "tokens": totals["tokens"],
        "tokens_per_s": totals["tokens"] / max(seconds, 1e-9),
        "seconds": seconds,
    }
