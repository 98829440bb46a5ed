"""Validation quality against training compute for a set of runs (the search plots of docs/results.md).

Reads each run folder's results.json and plots, per finetuning epoch, a validation metric against the
training wall time spent up to the end of that epoch (every epoch unit before it included: warm-up,
L-steps, C-steps). Optional horizontal reference lines (e.g. MostPop or Multi-VAE on the same split).

    .venv/bin/python scripts/val_vs_compute.py runs/a runs/b --label a=finetune-only --out val.png \
        --metric recall@20 --reference MostPop=0.180
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402


def curve(run: Path, metric: str) -> tuple[list[float], list[float]]:
    """(minutes of training at the end of each finetuning epoch, validation `metric` after it)."""
    path = run / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (is {run} a finished run folder?)")
    history = json.loads(path.read_text(encoding="utf-8"))["history"]
    minutes, values, spent = [], [], 0.0
    for entry in history:
        spent += entry.get("epoch_seconds", 0.0) / 60
        if entry["unit"].startswith("finetune"):
            if f"val_{metric}" not in entry:
                raise SystemExit(f"{path}: {entry['unit']} has no val_{metric}")
            minutes.append(spent)
            values.append(entry[f"val_{metric}"])
    return minutes, values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with results.json)")
    parser.add_argument("--label", action="append", default=[], help="RUN_FOLDER_NAME=legend text")
    parser.add_argument("--metric", default="recall@20", help="validation metric (default recall@20)")
    parser.add_argument("--reference", action="append", default=[], help="NAME=value: a dashed horizontal line")
    parser.add_argument("--title", default="Validation quality against training time")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    labels = dict(item.split("=", 1) for item in args.label)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for run in args.runs:
        minutes, values = curve(run, args.metric)
        axes.plot(minutes, values, marker="o", label=labels.get(run.name, run.name))
    for item in args.reference:
        name, value = item.split("=", 1)
        axes.axhline(float(value), linestyle="--", linewidth=1, color="grey")
        axes.annotate(name, (0, float(value)), xytext=(2, 2), textcoords="offset points", fontsize=8, color="grey")
    axes.set_xlabel("training wall time on 2 CPU cores (min)")
    axes.set_ylabel(f"validation {args.metric}")
    axes.set_title(args.title)
    axes.legend(fontsize=7)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=110)
    tmp.replace(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
