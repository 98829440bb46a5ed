"""`cllm4rec reproduce`: the paper's comparison (docs/results.md) on one dataset with one split.

Trains CLLM4Rec and each ablation (LLM-Scratch, LLM-CF, LLM-FtAll as a LoRA adapter by default,
LLM-FixOrd, LLM-PreRec) as its own run `<name>-<ablation>` (own output folder, checkpoints and
MLflow run), then CLLM4Rec-Emb and the ID-only Two-Tower over CLLM4Rec's saved model, and MostPop,
Multi-VAE and EASE; every row is scored on the same test split with Recall@10/20/40 and NDCG@10/100 (the
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

from data_prep.atomic import atomic_file
from trainer.config import ABLATION_NAMES, ConfigError, TrainConfig, config_to_dict, load_config
from trainer.distributed import launched_world_size
from trainer.results import column_title, markdown_table, write_report
from trainer.tracking import PARENT_TAG, Tracker

if TYPE_CHECKING:
    from trainer.pipeline import Start

DEFAULT_ABLATIONS = ("scratch", "cf", "ftall-lora", "fixord", "prerec")
EXTRA_KS = 10  # Recall@10 and NDCG@10 (the paper's LinkedIn metrics) join the recipe's cut-offs
# the paper's table order: ID baselines, the ablations, then the two deployment forms of CLLM4Rec
ROW_ORDER = ("MostPop", "Multi-VAE", "EASE", "Two-Tower", "LLM-Scratch", "LLM-CF", "LLM-FtAll", "LLM-FtAll (LoRA)",
             "LLM-FixOrd", "LLM-PreRec", "CLLM4Rec-Emb", "CLLM4Rec")


def row_configs(recipe: str | None, overrides: list[str], ablations: tuple[str, ...]) -> tuple[TrainConfig, dict[str, TrainConfig]]:
    """(the base config, {ablation: its training config}), every one checked before anything trains."""
    base = load_config(recipe, overrides)
    if base.ablation != "none":
        raise ConfigError(f"reproduce trains every ablation itself; leave out ablation={base.ablation} "
                          f"(choose rows with --ablations)")
    unknown = [a for a in ablations if a not in ABLATION_NAMES or a == "none"]
    if unknown:
        raise ConfigError(f"--ablations: unknown {', '.join(unknown)} (choose from "
                          f"{', '.join(a for a in ABLATION_NAMES if a != 'none')})")
    if "{name}" not in base.output_dir:
        raise ConfigError(f"output_dir={base.output_dir!r} must contain {{name}}: each row trains into its own folder")
    recall = sorted({*base.eval.recall_ks, EXTRA_KS})
    ndcg = sorted({*base.eval.ndcg_ks, EXTRA_KS})
    shared = [*overrides, f"eval.recall_ks={recall}", f"eval.ndcg_ks={ndcg}",
              f"eval.selection_metrics={json.dumps(base.eval.selection())}",
              "baselines.mostpop=false", "baselines.multivae=false", "baselines.ease=false"]
    configs = {a: load_config(recipe, [*shared, f"ablation={a}", f"name={base.name}-{a if a != 'none' else 'cllm4rec'}"])
               for a in ("none", *ablations)}
    return base, configs


def reproduce(recipe: str | None, overrides: list[str], *, ablations: tuple[str, ...] = DEFAULT_ABLATIONS,
              two_tower_epochs: int = 30, start: Start = "new", progress: bool = True) -> dict[str, Any]:
    """Train and score every row, write the table files; returns table.json's content."""
    from trainer.baselines import run_baselines
    from trainer.embeddings import dataset_splits, load_tables_and_dataset, two_tower_rows
    from trainer.pipeline import train

    if launched_world_size() > 1:
        raise ConfigError("reproduce runs its rows one after another in one process; on several ranks, train "
                          "each row with `python -m trainer ... ablation=<row> name=<name>-<row>` instead")
    base, configs = row_configs(recipe, overrides, ablations)
    main = configs["none"]
    out = Path(f"{base.resolved_output_dir()}-reproduce")
    rows: dict[str, dict[str, Any]] = {}
    with Tracker.of_config(base) as tracker:
        parent = tracker.start(f"{base.name}-reproduce", config_to_dict(base), tags={"reproduce": base.name})
        baseline_names = [n for n, on in (("MostPop", base.baselines.mostpop), ("Multi-VAE", base.baselines.multivae),
                                          ("EASE", base.baselines.ease)) if on]
        total = len(configs) + 2 + len(baseline_names)
        for index, (ablation, config) in enumerate(configs.items()):
            name = ABLATION_NAMES[ablation]
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
                  "columns": main.eval.columns(), "rows": {n: rows[n] for n in ROW_ORDER if n in rows}}
        write_report(out, "table", report, table_markdown(report), plot_table, tracker)
    print(table_markdown(report))
    print(f"reproduce: {out}")
    return report


def table_markdown(report: dict[str, Any]) -> str:
    header = (f"{report['name']}: {report['dataset']} (split seed {report['split_seed']}, seed {report['seed']}), "
              f"backbone {report['backbone']}\n\n")
    return header + markdown_table(report["rows"], report["columns"])


def plot_table(report: dict[str, Any], path: Path) -> Path:
    """One horizontal bar chart per metric, the rows in table order, CLLM4Rec highlighted; a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    names, columns = list(report["rows"]), report["columns"]
    figure = Figure(figsize=(3.2 * len(columns), 0.35 * len(names) + 1.4), layout="constrained")
    for axes, column in zip(figure.subplots(1, len(columns), sharey=True, squeeze=False)[0], columns):
        values = [report["rows"][n].get(column, float("nan")) for n in names]
        colors = ["tab:red" if n == "CLLM4Rec" else "tab:orange" if n.startswith("LLM-") or n == "CLLM4Rec-Emb"
                  else "tab:gray" for n in names]
        axes.barh(range(len(names)), values, color=colors)
        for y, value in enumerate(values):
            axes.text(value, y, f" {value:.3f}", va="center", fontsize=7)
        axes.set_yticks(range(len(names)), names, fontsize=8)
        axes.invert_yaxis()
        axes.set_title(column_title(column), fontsize=9)
        axes.set_xlim(0, max([v for v in values if v == v] + [1e-6]) * 1.3)
    figure.suptitle(f"{report['dataset']}: CLLM4Rec, ablations and baselines (test split)", fontsize=10)
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path
