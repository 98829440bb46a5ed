"""`cllm4rec reproduce`: every row of the paper's comparison on one split, the table files, tagged MLflow runs."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from matplotlib.colors import to_rgba

from cllm4rec.backbone import load_backbone

from conftest import tiny_overrides
from test_curves import png_colour_share, png_size
from trainer import ablations, cli
from trainer.ablations import Ablation, ablation_rows, reproduce_defaults
from trainer.config import ConfigError
from trainer.config_loading import load_config
from trainer.checkpoint import load_model
from trainer.reproduce import plot_table, row_color, row_configs, table_figure, table_order
from trainer.serving import evaluate_saved

COLUMNS = ["recall@10", "recall@20", "recall@40", "ndcg@10", "ndcg@100"]
ABLATIONS = {a.key: a.name for a in ablation_rows()}  # every ablation row: key → table row


def test_table_order_is_the_papers():
    assert table_order() == ("MostPop", "Multi-VAE", "EASE", "Two-Tower", "LLM-Scratch", "LLM-CF", "LLM-FtAll",
                             "LLM-FtAll (LoRA)", "LLM-FixOrd", "LLM-PreRec", "CLLM4Rec-Emb", "CLLM4Rec")
    assert reproduce_defaults() == ("scratch", "cf", "ftall-lora", "fixord", "prerec")
    assert [row_color(n) for n in ("MostPop", "LLM-CF", "CLLM4Rec-Emb", "CLLM4Rec")] == \
        ["tab:gray", "tab:orange", "tab:orange", "tab:red"]


def test_a_registered_ablation_joins_the_table_and_the_defaults(monkeypatch):
    """One record is all a new ablation needs: its row is in the table order (before CLLM4Rec-Emb and
    CLLM4Rec), its bars take its colour, and reproduce trains it by default when marked so."""
    new = Ablation("nomr", "LLM-NoMR", {"pretrain.lambda_c": 0.0}, reproduce_default=True, color="tab:purple")
    monkeypatch.setitem(ablations.ABLATIONS, new.key, new)
    order = table_order()
    assert order[-3:] == ("LLM-NoMR", "CLLM4Rec-Emb", "CLLM4Rec") and order.count("LLM-NoMR") == 1
    assert row_color("LLM-NoMR") == "tab:purple" and reproduce_defaults()[-1] == "nomr"
    with pytest.raises(TypeError):
        new.overrides["pretrain.lambda_c"] = 1.0  # a record cannot change under its users


def test_unknown_ablations_are_refused_naming_the_known_ones():
    with pytest.raises(ConfigError, match=r"--ablations: unknown bogus, none \(choose from scratch, cf, ftall, "
                                          r"ftall-lora, fixord, prerec\)"):
        row_configs(None, ["output_dir=/tmp/{name}"], ("cf", "bogus", "none"))
    with pytest.raises(ConfigError, match=r"'ablation': 'bogus' is not one of none, scratch, cf, ftall, ftall-lora, "
                                          r"fixord, prerec"):
        load_config(None, ["ablation=bogus"])


def test_table_png_draws_a_bar_per_row_in_its_colour(tmp_path):
    names = table_order()
    report = {"dataset": "planted", "columns": ["recall@20", "ndcg@100"],
              "rows": {n: {"recall@20": 0.05 * (i + 1), "ndcg@100": 0.5} for i, n in enumerate(names)}}
    figure = table_figure(report)
    assert len(figure.axes) == 2
    for axes in figure.axes:
        bars = axes.patches
        assert len(bars) == len(names)
        assert [tuple(bar.get_facecolor()) for bar in bars] == [to_rgba(row_color(n)) for n in names]
    widths = [bar.get_width() for bar in figure.axes[0].patches]
    assert widths == pytest.approx([0.05 * (i + 1) for i in range(len(names))])
    path = plot_table(report, tmp_path / "table.png")
    assert png_size(path) == (704, 616)  # 6.4 x (0.35 * 12 + 1.4) inches at 110 dpi
    assert png_colour_share(path) > 0.05  # the bars are drawn, not only axes and text


def test_row_configs_add_the_cutoffs_and_keep_the_selection(tmp_path):
    base, configs = row_configs(None, [f"output_dir={tmp_path}/{{name}}", "name=r"], ("cf", "fixord"))
    assert list(configs) == ["none", "cf", "fixord"]
    assert [c.name for c in configs.values()] == ["r-cllm4rec", "r-cf", "r-fixord"]
    assert configs["cf"].pretrain.content is False and configs["fixord"].pretrain.reorder is False
    for config in configs.values():
        assert config.eval.columns() == COLUMNS
        assert config.eval.selection() == ["recall@20", "recall@40", "ndcg@100"]  # the recipe's, not the new cut-offs
        baselines = config.baselines
        assert not (baselines.mostpop or baselines.multivae or baselines.ease)  # baselines run once, as their own rows
    assert base.baselines.mostpop and base.baselines.multivae and base.baselines.ease


@pytest.mark.parametrize(("args", "message"), [
    (["ablation=cf"], "leave out ablation=cf"),
    (["output_dir=/tmp/fixed"], "must contain {name}"),
    (["eval.selection_metrics=[recall@5]"], "recall@5 not among the reported metrics"),
])
def test_row_configs_refuse_what_cannot_be_reproduced(args, message):
    with pytest.raises(ConfigError, match=message):
        row_configs(None, args, ("cf",))


def test_unknown_ablation_row_is_named(capsys):
    assert cli.main(["reproduce", "--ablations", "cf,bogus"]) == 2
    assert "unknown bogus" in capsys.readouterr().err


@dataclass
class Reproduced:
    root: Path
    uri: str
    report: dict


@pytest.fixture(scope="module")
def reproduced(planted_dataset, tiny_llama, tmp_path_factory) -> Reproduced:
    """`cllm4rec reproduce` once, with every ablation (full and LoRA FtAll) on the planted data."""
    root = tmp_path_factory.mktemp("reproduce")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    overrides = tiny_overrides(planted_dataset, tiny_llama, root / "{name}", **{
        "name": "rp", "tracking.mlflow": True, "tracking.tracking_uri": uri, "data.reviews": False,
        "pretrain.warmup_epochs": 1, "pretrain.rounds": 1, "finetune.epochs": 2, "baselines.multivae_epochs": 5})
    assert cli.main(["reproduce", "--no-progress", "--two-tower-epochs", "3", "--ablations", ",".join(ABLATIONS),
                     *overrides]) == 0
    return Reproduced(root, uri, json.loads((root / "rp-reproduce" / "table.json").read_text()))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_reproduce_makes_every_row_the_files_and_tagged_runs(reproduced):
    from mlflow import MlflowClient

    root, report = reproduced.root, reproduced.report
    assert list(report["rows"]) == list(table_order()) and report["columns"] == COLUMNS
    for name, row in report["rows"].items():
        # 40 items: every candidate is in the top 40, and the worst ranking (the one held-out item last of
        # at most 40 candidates) still scores NDCG 1/log2(41); with one held-out item both grow with K
        assert row["recall@40"] == 1.0 and row["recall@10"] <= row["recall@20"] <= 1.0, name
        assert row["ndcg@10"] <= row["ndcg@100"] and 1 / math.log2(41) <= row["ndcg@100"] <= 1.0, name
    for ablation, name in (("cllm4rec", "CLLM4Rec"), *ABLATIONS.items()):
        saved = json.loads((root / f"rp-{ablation}" / "results.json").read_text())["models"]
        assert set(saved) == {name}  # no baseline inside a training row
        assert all(report["rows"][name][c] == pytest.approx(saved[name][c]) for c in COLUMNS)
        config = yaml.safe_load((root / f"rp-{ablation}" / "config.yaml").read_text())
        assert config["eval"]["selection_metrics"] == ["recall@20", "recall@40", "ndcg@100"]
    table = (root / "rp-reproduce" / "table.md").read_text()
    assert all(f"| {name} |" in table for name in table_order()) and "Recall@10" in table and "NDCG@10 " in table
    png = root / "rp-reproduce" / "table.png"
    assert png_size(png) == (1760, 616) and png_colour_share(png) > 0.05  # (5 x 3.2) x (0.35 * 12 + 1.4) in, 110 dpi

    client = MlflowClient(tracking_uri=reproduced.uri)
    runs = client.search_runs([client.get_experiment_by_name("cllm4rec").experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.info.run_name == "rp-reproduce"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["row"] for r in children) == sorted(table_order())
    for run in children:
        assert run.data.tags["reproduce"] == "rp" and run.data.tags["model"] == run.data.tags["row"]
        row = report["rows"][run.data.tags["row"]]
        assert run.data.metrics["test_recall_at_10"] == pytest.approx(row["recall@10"])
        assert run.data.metrics["test_ndcg_at_100"] == pytest.approx(row["ndcg@100"])
    assert {"table.json", "table.md", "table.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_each_ablation_row_trains_what_it_should(ablation, reproduced, tiny_llama):
    """Each ablation's phases, saved config, trained backbone weights, and a saved model that scores as the run did."""
    out = reproduced.root / f"rp-{ablation}"
    results = json.loads((out / "results.json").read_text())
    phases = [h["unit"].split("-")[0] for h in results["history"]]
    keys = set().union(*results["history"])
    saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert saved["ablation"] == ablation
    if ablation == "cf":
        assert phases == ["lstep", "finetune", "finetune"]
        assert not any(k.startswith("content_") for k in keys)
        assert saved["pretrain"]["content"] is False and saved["pretrain"]["lambda_c"] == 0.0
    elif ablation == "prerec":
        assert phases == ["warmup", "lstep", "cstep"]
        assert results["best_epoch"] is None and saved["finetune"]["enabled"] is False
    else:
        assert phases == ["warmup", "lstep", "cstep", "finetune", "finetune"]
    assert saved["pretrain"]["reorder"] is (ablation != "fixord")

    extra = load_model(out / "model").extra or {}
    pretrained = dict(load_backbone(str(tiny_llama), dtype=torch.float32)[0].named_parameters())
    if ablation in ("scratch", "ftall"):
        assert saved["model"]["train_backbone"] == "full" and set(extra) == set(pretrained)
        changed = {n for n in extra if not torch.equal(extra[n], pretrained[n])}
        assert any("layers" in n for n in changed), "the backbone's layers were not trained"
    elif ablation == "ftall-lora":
        assert extra and all("lora_" in n for n in extra), sorted(extra)
        assert any("lora_B" in n and bool(t.abs().sum() > 0) for n, t in extra.items())  # B starts at zero
    else:
        assert not extra  # a frozen backbone saves no weights
    again = evaluate_saved(out / "model")
    name = ABLATIONS[ablation]
    for key in COLUMNS:
        assert again[key] == pytest.approx(results["models"][name][key], abs=1e-9), key
