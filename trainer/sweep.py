"""`cllm4rec sweep KEY=V1,V2,...`: one training per value under one MLflow parent run, and the
sensitivity of the test metrics to the swept key (the paper's Figure 4 for λ_c) as a plot and a table.

Each value trains `<name>-<key leaf><value>` (its own output folder and MLflow run, nested under the
sweep's run; `--resume` / `--overwrite` apply to each); the sweep writes `<output_dir of name>-sweep/`:
sweep.json, sweep.md and sweep.png (every test metric against the value, log axis when all values
are positive).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.config import ConfigError, config_to_dict, flatten
from trainer.config_loading import load_config
from trainer.results import column_title, save_png, write_report
from trainer.tracking import Tracker

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from trainer.run_folder import Start

ALIASES = {"lambda_c": "pretrain.lambda_c", "lambda_l": "pretrain.lambda_l"}


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """'lambda_c=0.1,1,10' → ('pretrain.lambda_c', [0.1, 1, 10]); values parsed like overrides."""
    if "=" not in text:
        raise ConfigError(f"sweep {text!r}: expected KEY=V1,V2,... (e.g. lambda_c=0.01,0.1,1,10)")
    key, _, raw = text.partition("=")
    key = ALIASES.get(key.strip(), key.strip())
    # each value through the typed config: an unknown key or a wrong type is named here, before training
    values = [flatten(config_to_dict(load_config(None, [f"{key}={v.strip()}"])))[key] for v in raw.split(",") if v.strip()]
    if len(values) < 2:
        raise ConfigError(f"sweep {text!r}: give at least two values, comma-separated")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"sweep {text!r}: a value is repeated")
    return key, values


def run_name(base: str, key: str, value: Any) -> str:
    return f"{base}-{key.rsplit('.', 1)[-1]}{value}"


def sweep(key: str, values: list[Any], recipe: str | None, overrides: list[str], *, start: Start = "new",
          progress: bool = True) -> dict[str, Any]:
    """Train once per value of `key` and write the sensitivity table and plot; returns sweep.json's content."""
    from trainer.pipeline import train

    base = load_config(recipe, overrides)
    configs = [load_config(recipe, [*overrides, f"{key}={value}", f"name={run_name(base.name, key, value)}"])
               for value in values]  # every value checked before anything trains
    out = Path(f"{base.resolved_output_dir()}-sweep")
    columns = base.eval.columns()
    rows: list[dict[str, Any]] = []
    with Tracker.of_config(base) as tracker:
        parent = tracker.start(f"{base.name}-sweep-{key}", {"sweep.key": key, "sweep.values": values, **config_to_dict(base)},
                               tags={"sweep": key})
        for index, (value, config) in enumerate(zip(values, configs)):
            if parent is not None:
                config.tracking.parent_run_id = parent
            results = train(config, start=start, progress=progress)
            model = next(iter(results))
            row = {"value": value, "run": config.name, **{c: results[model][c] for c in columns}}
            rows.append(row)
            tracker.log_metrics({f"test_{c}": row[c] for c in columns}, step=index, parent=True)
        report = {"key": key, "values": values, "model": model, "metrics": columns, "rows": rows}
        write_report(out, "sweep", report, sweep_table(report), plot_sweep, tracker)
    print(sweep_table(report))
    print(f"sweep: {out}")
    return report


def sweep_table(report: dict[str, Any]) -> str:
    columns = report["metrics"]
    lines = [f"| {report['key']} | run | " + " | ".join(map(column_title, columns)) + " |",
             "|---|---|" + "---|" * len(columns)]
    for row in report["rows"]:
        lines.append(f"| {row['value']} | {row['run']} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(report: dict[str, Any], path: Path) -> Path:
    """`sweep_figure` of `report` written to `path` as a PNG."""
    return save_png(sweep_figure(report), path)


def sweep_figure(report: dict[str, Any]) -> Figure:
    """Every metric against the swept value, one marked line each (log axis when every value is positive)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in report["values"])
    xs = [float(v) for v in report["values"]] if numeric else list(range(len(report["values"])))
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    for column in report["metrics"]:
        axes.plot(xs, [row[column] for row in report["rows"]], marker="o", label=column)
    if numeric and all(x > 0 for x in xs):
        axes.set_xscale("log")
    if not numeric:
        axes.set_xticks(xs, [str(v) for v in report["values"]])
    axes.set_xlabel(report["key"])
    axes.set_ylabel("test metric")
    axes.set_title(f"{report['model']}: sensitivity to {report['key']}")
    axes.legend(fontsize=8)
    if not all(math.isfinite(row[c]) for row in report["rows"] for c in report["metrics"]):
        axes.text(0.5, 0.02, "some metrics are not finite", ha="center", transform=axes.transAxes)
    return figure
