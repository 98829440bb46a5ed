"""`cllm4rec reproduce`: the paper's comparison (docs/results.md) on one dataset with one split.

Trains CLLM4Rec and each ablation asked for (by default those trainer/ablations.py marks
`reproduce_default`) as its own run `<name>-<ablation>` (own output folder, checkpoints and MLflow
run), then CLLM4Rec-Emb and the ID-only Two-Tower over CLLM4Rec's saved model, and MostPop, Multi-VAE
and EASE; every row is scored on the same test split with Recall@10/20/40 and NDCG@10/100 (the
recipe's cut-offs plus 10; validation still selects on the recipe's own metrics). Writes
`<output_dir of name>-reproduce/`: table.md, table.json and table.png (one bar chart per metric).

In MLflow every row is one run nested under the reproduce run, with the tags `reproduce=<name>`,
`row=<row>` and `model=<row>` and its test metrics under the same keys (`test_recall_at_20`, ...),
so selecting the children in the UI compares them directly. `--resume` continues each training row
from its last checkpoint (a finished row is only evaluated again; a row not begun starts);
`--overwrite` trains every row again from scratch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.ablations import ABLATIONS, LLM_COLOR, NONE, ablation_rows, reproduce_defaults
from trainer.config import ConfigError, TrainConfig, config_to_dict
from trainer.config_loading import load_config
from trainer.distributed import launched_world_size
from trainer.results import column_title, markdown_table, save_png, write_report
from trainer.tracking import PARENT_TAG, Tracker

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from trainer.run_folder import Start

EXTRA_KS = 10  # Recall@10 and NDCG@10 (the paper's LinkedIn metrics) join the recipe's cut-offs
BASELINE_ROWS = ("MostPop", "Multi-VAE", "EASE", "Two-Tower")  # the ID-only models, drawn grey
BASELINE_COLOR = "tab:gray"
EMBEDDING_ROW = "CLLM4Rec-Emb"  # two towers over CLLM4Rec's tables, drawn as the LLM rows


def table_order() -> tuple[str, ...]:
    """The paper's table order: the ID baselines, every registered ablation (trainer/ablations.py), then
    the two deployment forms of CLLM4Rec (its embeddings, then the model itself)."""
    return (*BASELINE_ROWS, *(a.name for a in ablation_rows()), EMBEDDING_ROW, ABLATIONS[NONE].name)


def row_color(name: str) -> str:
    """The bar colour of table row `name`: its ablation's, the LLM rows' for CLLM4Rec-Emb, else grey."""
    colors = {a.name: a.color for a in ABLATIONS.values()} | {EMBEDDING_ROW: LLM_COLOR}
    return colors.get(name, BASELINE_COLOR)


def row_configs(recipe: str | None, overrides: list[str], ablations: tuple[str, ...]) -> tuple[TrainConfig, dict[str, TrainConfig]]:
    """(the base config, {ablation: its training config}), every one checked before anything trains."""
    base = load_config(recipe, overrides)
    if base.ablation != NONE:
        raise ConfigError(f"reproduce trains every ablation itself; leave out ablation={base.ablation} "
                          f"(choose rows with --ablations)")
    known = [a.key for a in ablation_rows()]
    unknown = [a for a in ablations if a not in known]
    if unknown:
        raise ConfigError(f"--ablations: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    if "{name}" not in base.output_dir:
        raise ConfigError(f"output_dir={base.output_dir!r} must contain {{name}}: each row trains into its own folder")
    recall = sorted({*base.eval.recall_ks, EXTRA_KS})
    ndcg = sorted({*base.eval.ndcg_ks, EXTRA_KS})
    shared = [*overrides, f"eval.recall_ks={recall}", f"eval.ndcg_ks={ndcg}",
              f"eval.selection_metrics={json.dumps(base.eval.selection())}",
              "baselines.mostpop=false", "baselines.multivae=false", "baselines.ease=false"]
    configs = {a: load_config(recipe, [*shared, f"ablation={a}", f"name={base.name}-{a if a != NONE else 'cllm4rec'}"])
               for a in (NONE, *ablations)}
    return base, configs


def reproduce(recipe: str | None, overrides: list[str], *, ablations: tuple[str, ...] | None = None,
              two_tower_epochs: int = 30, start: Start = "new", progress: bool = True) -> dict[str, Any]:
    """Train and score every row (`ablations`: the registry's reproduce defaults when None), write the
    table files; returns table.json's content."""
    from trainer.baselines import run_baselines
    from trainer.embeddings import dataset_splits, load_tables_and_dataset, two_tower_rows
    from trainer.pipeline import train

    if launched_world_size() > 1:
        raise ConfigError("reproduce runs its rows one after another in one process; on several ranks, train "
                          "each row with `python -m trainer ... ablation=<row> name=<name>-<row>` instead")
    base, configs = row_configs(recipe, overrides, reproduce_defaults() if ablations is None else ablations)
    main = configs[NONE]
    out = Path(f"{base.resolved_output_dir()}-reproduce")
    rows: dict[str, dict[str, Any]] = {}
    with Tracker.of_config(base) as tracker:
        parent = tracker.start(f"{base.name}-reproduce", config_to_dict(base), tags={"reproduce": base.name})
        baseline_names = [n for n, on in (("MostPop", base.baselines.mostpop), ("Multi-VAE", base.baselines.multivae),
                                          ("EASE", base.baselines.ease)) if on]
        total = len(configs) + 2 + len(baseline_names)
        for index, (ablation, config) in enumerate(configs.items()):
            name = ABLATIONS[ablation].name
            print(f"reproduce: row {index + 1}/{total} {name} -> {config.resolved_output_dir()}", flush=True)
            config.tracking.parent_run_id = parent
            config.tracking.tags = {"reproduce": base.name, "row": name}
            rows[name] = {**train(config, start=start, progress=progress)[name], "run": str(config.resolved_output_dir())}

        model_dir = main.resolved_output_dir() / "model"
        print(f"reproduce: rows {len(configs) + 1}-{total}/{total} CLLM4Rec-Emb and Two-Tower over {model_dir}"
              + "".join(f", {n}" for n in baseline_names), flush=True)
        tables, _, dataset = load_tables_and_dataset(model_dir)  # the tables and the split, read once for every row
        splits = dataset_splits(dataset)
        towers = two_tower_rows(tables, splits, main.eval, epochs=two_tower_epochs, seed=base.seed, progress=progress)
        baselines = run_baselines(*splits, base.baselines, main.eval, base.seed, progress)
        for name, metrics in {**towers, **baselines}.items():
            params = ({"two_tower_epochs": two_tower_epochs, "embeddings_of": str(model_dir)} if name in towers
                      else {f"baselines.{k}": v for k, v in config_to_dict(base)["baselines"].items()})
            with Tracker.of_config(base) as row:
                row.start(name, {"dataset": main.data.dataset, "seed": base.seed, **params},
                          tags={"reproduce": base.name, "row": name, "model": name, **({PARENT_TAG: parent} if parent else {})})
                row.log_metrics({f"test_{k}": v for k, v in metrics.items()}, parent=True)
            rows[name] = {**metrics, "run": str(model_dir) if name in towers else "baseline"}

        results = json.loads((main.resolved_output_dir() / "results.json").read_text(encoding="utf-8"))
        report = {"name": base.name, "dataset": results["dataset"], "dataset_hash": results["dataset_hash"],
                  "backbone": results["backbone"], "split_seed": main.data.split_seed, "seed": base.seed,
                  "columns": main.eval.columns(), "rows": {n: rows[n] for n in table_order() if n in rows}}
        write_report(out, "table", report, table_markdown(report), plot_table, tracker)
    print(table_markdown(report))
    print(f"reproduce: {out}")
    return report


def table_markdown(report: dict[str, Any]) -> str:
    header = (f"{report['name']}: {report['dataset']} (split seed {report['split_seed']}, seed {report['seed']}), "
              f"backbone {report['backbone']}\n\n")
    return header + markdown_table(report["rows"], report["columns"])


def plot_table(report: dict[str, Any], path: Path) -> Path:
    """`table_figure` of `report` written to `path` as a PNG."""
    return save_png(table_figure(report), path)


def table_figure(report: dict[str, Any]) -> Figure:
    """One horizontal bar chart per metric (column), a bar per row in table order, coloured by `row_color`."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    names, columns = list(report["rows"]), report["columns"]
    figure = Figure(figsize=(3.2 * len(columns), 0.35 * len(names) + 1.4), layout="constrained")
    for axes, column in zip(figure.subplots(1, len(columns), sharey=True, squeeze=False)[0], columns):
        values = [report["rows"][n].get(column, float("nan")) for n in names]
        axes.barh(range(len(names)), values, color=[row_color(n) for n in names])
        for y, value in enumerate(values):
            axes.text(value, y, f" {value:.3f}", va="center", fontsize=7)
        axes.set_yticks(range(len(names)), names, fontsize=8)
        axes.invert_yaxis()
        axes.set_title(column_title(column), fontsize=9)
        axes.set_xlim(0, max([v for v in values if v == v] + [1e-6]) * 1.3)
    figure.suptitle(f"{report['dataset']}: CLLM4Rec, ablations and baselines (test split)", fontsize=10)
    return figure
