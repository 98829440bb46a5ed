"""CLLM4Rec vs Multi-VAE vs EASE on ML-100K over several split seeds (mean ± sd), with wall time per phase.

    .venv/bin/python benchmarks/ml100k_quality.py --recipe quick --seeds 0 1 2 [overrides ...]
    .venv/bin/python benchmarks/ml100k_quality.py --baselines-only --seeds 0 1 2

Prints a Markdown table whose rows start with the model name (`| CLLM4Rec |`, `| Multi-VAE |`,
`| EASE |`), then the wall time of each phase. Each seed is a separate split (data.split_seed) and a
separate training seed; runs go to runs/bench-<recipe>-seed<N>.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections import defaultdict

from trainer.baselines import run_baselines
from trainer.build import resolve_dataset
from trainer.config import load_config
from trainer.data import user_item_lists
from trainer.pipeline import train
from data_prep.processed import load_processed

COLUMNS = ("recall@20", "recall@40", "ndcg@100")


def run_seed(args: argparse.Namespace, seed: int) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """({model: test metrics}, {phase: seconds}) for one split seed."""
    overrides = [f"seed={seed}", f"data.split_seed={seed}", f"name=bench-{args.recipe}-seed{seed}",
                 "tracking.experiment=benchmark-ml100k", *args.overrides]
    config = load_config(args.recipe, overrides)
    if args.baselines_only:
        dataset = load_processed(resolve_dataset(config.data.dataset, seed))
        splits = [user_item_lists(dataset, s) for s in ("train", "val", "test")]
        rows = run_baselines(*splits, config.baselines, config.eval, seed, progress=False)
        return rows, {name: row["seconds"] for name, row in rows.items()}
    rows = train(config, progress=not args.no_progress)
    history = json.loads((config.resolved_output_dir() / "results.json").read_text())["history"]
    phases: dict[str, float] = defaultdict(float)
    for unit in history:
        phases[unit["unit"].split("-")[0]] += unit["epoch_seconds"]
    for name in ("Multi-VAE", "EASE"):
        if name in rows:
            phases[name] = rows[name]["seconds"]
    return rows, dict(phases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baselines-only", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    phase_times: dict[str, list[float]] = defaultdict(list)
    started = time.perf_counter()
    for seed in args.seeds:
        rows, phases = run_seed(args, seed)
        for model, metrics in rows.items():
            print(f"seed {seed}: {model}: " + ", ".join(f"{c}={metrics[c]:.4f}" for c in COLUMNS), flush=True)
        for model, metrics in rows.items():
            for column in COLUMNS:
                results[model][column].append(metrics[column])
        for phase, seconds in phases.items():
            phase_times[phase].append(seconds)

    def cell(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {sd:.4f}"

    print(f"\nML-100K, recipe {args.recipe!r}, split seeds {args.seeds}, overrides {args.overrides or 'none'}\n")
    print("| Model | Recall@20 | Recall@40 | NDCG@100 |")
    print("|---|---|---|---|")
    for model, metrics in results.items():
        print(f"| {model} | " + " | ".join(cell(metrics[c]) for c in COLUMNS) + " |")
    print("\n| Phase | wall time per seed (s) |")
    print("|---|---|")
    for phase, seconds in phase_times.items():
        print(f"| {phase} | {statistics.mean(seconds):.1f} |")
    print(f"\ntotal wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
