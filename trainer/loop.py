"""One training epoch over a batch stream, with a progress bar and per-epoch loss summaries."""
from __future__ import annotations

import itertools
import time
from typing import Iterator

from tqdm.auto import tqdm

from trainer.data import Batch
from trainer.engine import PlainEngine


def run_epoch(
    engine: PlainEngine,
    task: str,
    optimizer: str,
    batches: Iterator[Batch],
    *,
    total: int,
    max_steps: int | None,
    lambda_c: float,
    lambda_l: float,
    desc: str,
    progress: bool = True,
) -> dict[str, float]:
    """Train one epoch; returns lm_loss (token-mean over the epoch), mr_loss and prior_loss (the
    λ-scaled terms, mean per batch), loss, steps, tokens (non-padding), tokens_per_s, seconds."""
    steps = total if max_steps is None else min(total, max_steps)
    sums = {"lm_sum": 0.0, "lm_count": 0.0, "mr_sum": 0.0, "prior_sum": 0.0, "loss": 0.0}
    tokens = 0
    start = time.perf_counter()
    bar = tqdm(itertools.islice(batches, steps), total=steps, desc=desc, disable=not progress, leave=False)
    done = 0
    for batch in bar:
        out = engine.train_step(task, batch, optimizer)
        for key in sums:
            sums[key] += out[key]
        tokens += int(batch["lengths"].sum())
        done += 1
        bar.set_postfix(lm=f"{sums['lm_sum'] / max(sums['lm_count'], 1):.3f}", mr=f"{lambda_c * out['mr_sum']:.3f}")
    seconds = time.perf_counter() - start
    done = max(done, 1)
    return {
        "lm_loss": sums["lm_sum"] / max(sums["lm_count"], 1.0),
        "mr_loss": lambda_c * sums["mr_sum"] / done,
        "prior_loss": lambda_l * sums["prior_sum"] / done,
        "loss": sums["loss"] / done,
        "steps": float(done),
        "tokens": float(tokens),
        "tokens_per_s": tokens / max(seconds, 1e-9),
        "seconds": seconds,
    }
