"""Incremental training vs training from scratch (`cllm4rec train --init-from`, docs/incremental.md): the epochs
each needs to reach the same validation quality on a dataset prepared again later.

    .venv/bin/python benchmarks/incremental.py --dataset ml-100k --recipe quick
    .venv/bin/python benchmarks/incremental.py --dataset DATA --recipe quick --warm finetune.epochs=4 -- model.backbone=B

The given dataset is the later one. An earlier snapshot is cut from it (data_prep/snapshot.py): its
training interactions less every interaction of `--items` of the items and `--users` of the users (new
since), less the newest until the later training split holds `--interactions` more; none of the later
validation or test interactions is in it. Three runs of the recipe (with the overrides after `--`):
"earlier" on the snapshot, "scratch" on the later dataset, and "warm" on the later dataset with
`--init-from` the earlier run and the `--warm` overrides (default: no pretraining, finetuning only).

Quality is the validation selection score of each finetuning epoch (`eval.selection_metrics`; by default
Recall@20 + Recall@40 + NDCG@100); the target is the from-scratch run's best, less `--tolerance`
(relative). Printed per run: its epoch units (every phase) and finetuning epochs, its best score, the
epoch units and finetuning epochs it took to reach the target, its minutes of training epochs (evaluation
and baselines apart); then the mapping,
and how many of the new items are in some user's top `--k`. `<out>/incremental.json` holds the same.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

WARM = ["pretrain.warmup_epochs=0", "pretrain.rounds=0"]
RUNS = ("earlier", "scratch", "warm")


def earlier_dataset(later: Path, out: Path, *, interactions: float, items: float, users: float, seed: int,
                    resume: bool = False) -> Path:
    """The earlier snapshot of the prepared dataset `later`, prepared into `out` with the later split seed
    (`resume`: a snapshot already prepared there is kept)."""
    from data_prep.prepare import prepare
    from data_prep.processed import load_processed
    from data_prep.snapshot import snapshot_builder

    if resume and (out / "meta.json").is_file():
        return out
    dataset = load_processed(later)
    prepare(snapshot_builder(dataset, interactions=interactions, items=items, users=users, seed=seed).build(), out,
            kcore=0, seed=dataset.seed)
    return out


def train_run(out: Path, dataset: Path, recipe: str | None, overrides: list[str], init_from: Path | None = None,
              resume: bool = False) -> Path:
    """Train the recipe on `dataset` into `out` (MLflow off unless an override turns it on); the run folder.
    `resume`: a finished run (its results.json written) is kept, an unfinished one continues from its last
    checkpoint."""
    from trainer.config_loading import load_config
    from trainer.pipeline import train

    if resume and (out / "results.json").is_file():
        return out
    config = load_config(recipe, ["tracking.mlflow=false", *overrides, f"data.dataset={dataset}", f"output_dir={out}"])
    config.incremental.init_from = str(init_from) if init_from else None
    train(config, progress=False, start="resume-or-start" if resume else "new")
    return out


def reach(history: list[dict[str, Any]], target: float) -> tuple[int, int] | None:
    """(epoch units, finetuning epochs) up to the first finetuning epoch whose validation score is ≥ `target`,
    or None when none is."""
    epochs = 0
    for units, entry in enumerate(history, start=1):
        if "val_selection" in entry:
            epochs += 1
            if entry["val_selection"] >= target:
                return units, epochs
    return None


def new_items_recommended(model: Path, items: list[str], k: int) -> int:
    """How many of `items` (raw ids) are in some user's top `k` of the saved `model`."""
    from trainer.serving import Recommender

    top = set(Recommender.load(model).recommend(None, k).column("item").to_pylist())
    return sum(item in top for item in items)


def compare(runs: dict[str, Path], tolerance: float, k: int) -> dict[str, Any]:
    """The report of three finished runs ("earlier", "scratch", "warm" → run folder): see the module docstring."""
    history = {name: json.loads((out / "results.json").read_text(encoding="utf-8"))["history"] for name, out in runs.items()}
    scores = {name: [h["val_selection"] for h in entries if "val_selection" in h] for name, entries in history.items()}
    target = max(scores["scratch"]) * (1 - tolerance)
    init = json.loads((runs["warm"] / "init_from.json").read_text(encoding="utf-8"))
    return {"target": target, "tolerance": tolerance, "init_from": init["counts"], "k": k,
            "new_items": {name: new_items_recommended(runs[name] / "model", init["new"]["items"], k)
                          for name in ("scratch", "warm")},
            "runs": {name: {"folder": str(out), "units": len(history[name]), "finetune_epochs": len(scores[name]),
                            "best": max(scores[name]), "scores": scores[name], "reach": reach(history[name], target),
                            "seconds": sum(h["epoch_seconds"] for h in history[name])}
                     for name, out in runs.items()}}


def table(report: dict[str, Any]) -> str:
    """The printed table and the lines under it."""
    from trainer.id_mapping import counts_summary

    lines = ["| run | epoch units | finetuning epochs | best val score | units to target | finetuning epochs to target "
             "| train min |", "|---|---|---|---|---|---|---|"]
    for name, run in report["runs"].items():
        units, epochs = run["reach"] or ("not reached", "not reached")
        lines.append(f"| {name} | {run['units']} | {run['finetune_epochs']} | {run['best']:.4f} | {units} | {epochs} | "
                     f"{run['seconds'] / 60:.1f} |")
    lines += ["", f"target: {report['target']:.4f} (the scratch run's best less {report['tolerance']:.0%})",
              f"init from the earlier run: {counts_summary(report['init_from'])}",
              f"new items in some user's top {report['k']}: warm {report['new_items']['warm']}, "
              f"scratch {report['new_items']['scratch']} (of {report['init_from']['items']['new']})"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="the later dataset: a prepared folder or name")
    parser.add_argument("--recipe", default="quick", help="recipe of all three runs (default quick)")
    parser.add_argument("--interactions", type=float, default=0.1, help="later training split / earlier - 1 (0.1)")
    parser.add_argument("--items", type=float, default=0.05, help="share of the items new since (0.05)")
    parser.add_argument("--users", type=float, default=0.05, help="share of the users new since (0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the snapshot's draws (0)")
    parser.add_argument("--warm", nargs="*", default=WARM, help=f"overrides of the warm run (default {' '.join(WARM)})")
    parser.add_argument("--tolerance", type=float, default=0.02, help="target = scratch's best × (1 - this) (0.02)")
    parser.add_argument("--k", type=int, default=20, help="top-k of the new-items check (20)")
    parser.add_argument("--out", type=Path, help="folder of the snapshot and the runs (default: a temporary one)")
    parser.add_argument("--resume", action="store_true",
                        help="keep what an earlier call with the same --out finished and continue its unfinished run")
    parser.add_argument("overrides", nargs="*", help="config overrides of all three runs")
    args = parser.parse_args()
    if args.resume and args.out is None:
        parser.error("--resume needs --out: the folder of the earlier call")

    from trainer.build import resolve_dataset

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        later = resolve_dataset(args.dataset)
        earlier = earlier_dataset(later, out / "earlier-data", interactions=args.interactions, items=args.items,
                                  users=args.users, seed=args.seed, resume=args.resume)
        runs = {"earlier": train_run(out / "earlier", earlier, args.recipe, args.overrides, resume=args.resume),
                "scratch": train_run(out / "scratch", later, args.recipe, args.overrides, resume=args.resume)}
        runs["warm"] = train_run(out / "warm", later, args.recipe, [*args.overrides, *args.warm],
                                 init_from=runs["earlier"], resume=args.resume)
        report = compare(runs, args.tolerance, args.k)
        (out / "incremental.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"dataset {later}, recipe {args.recipe} {' '.join(args.overrides)}; warm: {' '.join(args.warm)}\n")
        print(table(report))


if __name__ == "__main__":
    main()
