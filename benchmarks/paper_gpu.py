"""Run the `paper` recipe on one GPU in bf16, after estimating its wall time from measured throughput.

    .venv/bin/python benchmarks/paper_gpu.py                  # measure, print the estimate, then train
    .venv/bin/python benchmarks/paper_gpu.py --estimate-only  # measure and print only (works on CPU too)

The estimate: tokens of one epoch of each task (counted from this dataset's documents) divided by the
training rate measured on `--probe-steps` real batches of that task, times the paper schedule
(10 warm-up epochs, 100 rounds of L+C epochs, finetuning epochs each with a content epoch and a
validation pass). Early stopping makes the finetuning part an upper bound.
"""
from __future__ import annotations

import argparse
import itertools
import time

import torch

from trainer.config_loading import load_config
from trainer.data import epoch_rng
from trainer.engine import PlainEngine
from trainer.phases import StepKind
from trainer.pipeline import TrainingRun, train
from trainer.schedule import PLANNED_STEPS


def measure(run: TrainingRun, step: StepKind, steps: int) -> tuple[float, float]:
    """(training tokens per second on `steps` batches after one warm-up batch, tokens per epoch)."""
    def stream():
        return run.batches(step, epoch_rng(0, "probe", step.task))[0]

    epoch_tokens = float(sum(int(b["lengths"].sum()) for b in stream()))
    engine: PlainEngine = run.engine
    batches = list(itertools.islice(stream(), steps + 1))
    engine.train_step(step, batches[0])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start, tokens = time.perf_counter(), 0
    for batch in batches[1:]:
        engine.train_step(step, batch)
        tokens += int(batch["lengths"].sum())
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - start), epoch_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimate-only", action="store_true")
    parser.add_argument("--probe-steps", type=int, default=10)
    parser.add_argument("overrides", nargs="*", help="config overrides for the paper recipe")
    args = parser.parse_args()
    config = load_config("paper", ["model.dtype=auto", "device=auto", *args.overrides])
    probe = TrainingRun(load_config("paper", ["model.dtype=auto", "device=auto", "tracking.mlflow=false",
                                         "output_dir=runs/paper-probe", *args.overrides]), progress=False)
    rates = {step.task.value: measure(probe, step, args.probe_steps) for step in PLANNED_STEPS}
    epoch_s = {task: tokens / rate for task, (rate, tokens) in rates.items()}
    pre, fine = config.pretrain, config.finetune
    validation_s = epoch_s["rec"] / 3  # forward only, one prompt per user
    total = (pre.warmup_epochs * epoch_s["content"] + pre.rounds * (epoch_s["collab"] + epoch_s["content"])
             + fine.epochs * (epoch_s["rec"] + epoch_s["content"] + validation_s))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device {device}, backbone dtype {probe.parts.model.compute_dtype}")
    for task, (rate, tokens) in rates.items():
        print(f"  {task:8s} {rate:10.0f} tokens/s  {tokens:10.0f} tokens/epoch  {epoch_s[task]:8.1f} s/epoch")
    print(f"estimated wall time of the paper schedule: {total / 3600:.1f} h (finetuning part is an upper bound)")
    del probe
    if not args.estimate_only:
        train(config)


if __name__ == "__main__":
    main()
