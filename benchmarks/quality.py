"""CLLM4Rec (and its ablations) vs MostPop, Multi-VAE and EASE over several split seeds of a recipe's
dataset (mean ± sd), with the wall time of each phase.

    .venv/bin/python benchmarks/quality.py --recipe quick --seeds 0 1 2 --ablations none cf [-- overrides ...]
    .venv/bin/python benchmarks/quality.py --recipe content-signal --seeds 0 1 2 --ablations none cf
    .venv/bin/python benchmarks/quality.py --baselines-only --seeds 0 1 2

Prints a Markdown table whose rows start with the model name (`| CLLM4Rec |`, `| LLM-CF |`,
`| Multi-VAE |`, ...), then the wall time of each phase. Each seed is a separate split
(data.split_seed: the embedded ML-100K is split on demand; a dataset named in the cache must have been
prepared with `--seed N` for each seed N) and a separate training seed. Every ablation of a seed trains
on the same split; the baselines run once per seed, with the first ablation. Runs go to
runs/bench-<recipe>[-<variant>][-<ablation>]-seed<N> (--variant names a set of overrides), tracked in
the MLflow experiment benchmark-<dataset>; with --resume a run that finished is read back from its
results.json and one that did not continues from its last checkpoint, so an interrupted benchmark
loses at most one epoch; without --resume a cell whose run folder already holds a run is refused.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections import defaultdict
from pathlib import Path

from trainer.ablations import NONE
from trainer.baselines import run_baselines
from trainer.build import resolve_dataset
from trainer.config_loading import load_config
from trainer.data import user_item_lists
from trainer.pipeline import train
from data_prep.processed import load_processed

COLUMNS = ("recall@20", "recall@40", "ndcg@100")


def run_name(recipe: str, ablation: str, seed: int, variant: str | None = None) -> str:
    """The run (and output folder) name of one benchmark cell, e.g. bench-quick-cf-seed1, or
    bench-quick-lr3e-4-cf-seed1 for the variant `lr3e-4` (the same recipe with other overrides)."""
    return f"bench-{recipe}{'-' + variant if variant else ''}{'' if ablation == NONE else '-' + ablation}-seed{seed}"


def dataset_name(recipe: str, overrides: list[str]) -> str:
    """The name of the dataset a recipe with `overrides` trains on (its folder's name for a path)."""
    return Path(load_config(recipe, overrides).data.dataset).name


def run_seed(args: argparse.Namespace, seed: int, ablation: str, baselines: bool
             ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """({model: test metrics}, {phase: seconds}) for one split seed and one ablation."""
    overrides = [f"seed={seed}", f"data.split_seed={seed}", f"ablation={ablation}",
                 f"name={run_name(args.recipe, ablation, seed, args.variant)}",
                 *([] if baselines else ["baselines.mostpop=false", "baselines.multivae=false", "baselines.ease=false"]),
                 *args.overrides]
    config = load_config(args.recipe, [f"tracking.experiment=benchmark-{args.dataset}", *overrides])
    if args.baselines_only:
        dataset = load_processed(resolve_dataset(config.data.dataset, seed))
        splits = [user_item_lists(dataset, s) for s in ("train", "val", "test")]
        rows = run_baselines(*splits, config.baselines, config.eval, seed, progress=False)
        return rows, {name: row["seconds"] for name, row in rows.items()}
    results_file = config.resolved_output_dir() / "results.json"
    if not (args.resume and results_file.is_file()):
        train(config, start="resume-or-start" if args.resume else "new", progress=not args.no_progress)
    results = json.loads(results_file.read_text())
    rows = results["models"]
    phases: dict[str, float] = defaultdict(float)
    prefix = "" if ablation == NONE else f"{ablation} "
    for unit in results["history"]:
        phases[prefix + unit["unit"].split("-")[0]] += unit["epoch_seconds"]
    for name in ("Multi-VAE", "EASE"):
        if name in rows:
            phases[name] = rows[name]["seconds"]
    return rows, dict(phases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ablations", nargs="+", default=[NONE],
                        help="ablations to train on every seed (none = CLLM4Rec; cf = LLM-CF; ...)")
    parser.add_argument("--variant", help="a name for these overrides, put in the run names so that runs of the same "
                        "recipe with other overrides get folders of their own")
    parser.add_argument("--baselines-only", action="store_true")
    parser.add_argument("--resume", action="store_true",
                        help="read finished runs back from their results.json and continue unfinished ones")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    swallowed = [a for a in args.ablations if "=" in a]
    if swallowed:  # --ablations takes every word up to the next flag, key=value overrides too
        parser.error(f"--ablations got the overrides {' '.join(swallowed)}: put overrides before --seeds and "
                     "--ablations, or after `--`")
    args.dataset = dataset_name(args.recipe, args.overrides)  # the per-cell overrides do not change it
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    phase_times: dict[str, list[float]] = defaultdict(list)
    started = time.perf_counter()
    ablations = args.ablations[:1] if args.baselines_only else args.ablations
    for seed in args.seeds:
        seen: set[str] = set()  # a model counts once per seed (a finished run read back may hold baselines too)
        for index, ablation in enumerate(ablations):
            rows, phases = run_seed(args, seed, ablation, baselines=index == 0)
            for model, metrics in rows.items():
                if model in seen:
                    continue
                seen.add(model)
                print(f"seed {seed}: {model}: " + ", ".join(f"{c}={metrics[c]:.4f}" for c in COLUMNS), flush=True)
                for column in COLUMNS:
                    results[model][column].append(metrics[column])
            for phase, seconds in phases.items():
                phase_times[phase].append(seconds)

    def cell(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {sd:.4f}"

    print(f"\n{args.dataset}, recipe {args.recipe!r}, split seeds {args.seeds}, "
          f"overrides {args.overrides or 'none'}\n")
    print("| Model | Recall@20 | Recall@40 | NDCG@100 |")
    print("|---|---|---|---|")
    for model, metrics in results.items():
        print(f"| {model} | " + " | ".join(cell(metrics[c]) for c in COLUMNS) + " |")
    print("\n| Phase | wall time per seed (s) |")
    print("|---|---|")
    for phase, seconds in phase_times.items():
        print(f"| {phase} | {statistics.mean(seconds):.1f} |")
    print(f"\nwall time of this invocation: {time.perf_counter() - started:.0f} s"
          + (" (finished cells are read back from their results.json; the phase times above are theirs)" if args.resume else ""))


if __name__ == "__main__":
    main()
