"""Validation quality against training compute for a set of runs (the search plots of docs/results.md).

Reads each run folder's results.json and plots, per finetuning epoch, a validation metric against the
training compute spent up to the end of that epoch (every epoch unit before it included: warm-up,
L-steps, C-steps): the backbone tokens trained on (forward + backward, padding excluded; the same
whatever else shares the machine) or the wall time. Optional horizontal reference lines (e.g.
MostPop or Multi-VAE on the same split).

    .venv/bin/python scripts/val_vs_compute.py runs/a runs/b --label a=finetune-only --out val.png \
        --metric recall@20 --reference MostPop=0.180 [--x minutes]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402


def spent(entry: dict, x: str) -> float:
    """Compute of one epoch unit: millions of trained tokens (every task of the unit), or minutes."""
    if x == "minutes":
        return entry.get("epoch_seconds", 0.0) / 60
    return sum(v for k, v in entry.items() if k.endswith("_tokens")) / 1e6


def curve(run: Path, metric: str, x: str = "tokens") -> tuple[list[float], list[float]]:
    """(compute at the end of each finetuning epoch — `spent` summed over the units up to it —,
    validation `metric` after that epoch)."""
    path = run / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (is {run} a finished run folder?)")
    history = json.loads(path.read_text(encoding="utf-8"))["history"]
    xs, values, total = [], [], 0.0
    for entry in history:
        total += spent(entry, x)
        if entry["unit"].startswith("finetune"):
            if f"val_{metric}" not in entry:
                raise SystemExit(f"{path}: {entry['unit']} has no val_{metric}")
            xs.append(total)
            values.append(entry[f"val_{metric}"])
    return xs, values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with results.json)")
    parser.add_argument("--label", action="append", default=[], help="RUN_FOLDER_NAME=legend text")
    parser.add_argument("--metric", default="recall@20", help="validation metric (default recall@20)")
    parser.add_argument("--reference", action="append", default=[], help="NAME=value: a dashed horizontal line")
    parser.add_argument("--x", choices=("tokens", "minutes"), default="tokens",
                        help="compute axis: trained tokens (default; independent of machine load) or wall minutes")
    parser.add_argument("--title", default="Validation quality against training compute")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    labels = dict(item.split("=", 1) for item in args.label)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for run in args.runs:
        xs, values = curve(run, args.metric, args.x)
        axes.plot(xs, values, marker="o", label=labels.get(run.name, run.name))
    for item in args.reference:
        name, value = item.split("=", 1)
        axes.axhline(float(value), linestyle="--", linewidth=1, color="grey")
        axes.text(0.01, float(value), name, transform=axes.get_yaxis_transform(), fontsize=8, color="grey",
                  verticalalignment="bottom")
    axes.set_xlabel("training wall time (min)" if args.x == "minutes" else "backbone tokens trained on (millions)")
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
