"""`cllm4rec sweep`: one run per value under one MLflow parent, the sensitivity table and plot."""
from __future__ import annotations

import json

import pytest

from conftest import tiny_overrides
from test_curves import png_colour_share, png_size
from trainer import cli
from trainer.config import ConfigError
from trainer.sweep import parse_sweep, plot_sweep, sweep_figure


def test_parse_sweep_values_and_errors():
    assert parse_sweep("lambda_c=0.01,0.1,1") == ("pretrain.lambda_c", [0.01, 0.1, 1.0])
    assert parse_sweep("finetune.epochs=2,3") == ("finetune.epochs", [2, 3])
    for bad, message in (("lambda_c", "expected KEY=V1,V2"), ("lambda_c=1", "at least two values"),
                         ("lambda_c=1,1", "repeated"), ("pretrain.nope=1,2", "pretrain.nope")):
        with pytest.raises(ConfigError, match=message):
            parse_sweep(bad)


def test_sweep_plot_draws_each_metric_against_the_values(tmp_path):
    report = {"key": "pretrain.lambda_c", "values": [0.1, 1.0, 10.0], "model": "CLLM4Rec",
              "metrics": ["recall@20", "ndcg@100"],
              "rows": [{"recall@20": 0.5, "ndcg@100": 0.3}, {"recall@20": 0.6, "ndcg@100": 0.35},
                       {"recall@20": 0.4, "ndcg@100": 0.25}]}
    (axes,) = sweep_figure(report).axes
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.get_lines()}
    assert lines == {"recall@20": ([0.1, 1.0, 10.0], [0.5, 0.6, 0.4]), "ndcg@100": ([0.1, 1.0, 10.0], [0.3, 0.35, 0.25])}
    assert axes.get_xscale() == "log"
    path = plot_sweep(report, tmp_path / "sweep.png")
    assert png_size(path) == (660, 440) and png_colour_share(path) > 0.002  # 6 x 4 inches at 110 dpi


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sweep_makes_one_run_per_value_and_the_plot(planted_dataset, tiny_llama, tmp_path, capsys):
    from mlflow import MlflowClient

    overrides = tiny_overrides(planted_dataset, tiny_llama, tmp_path / "{name}", **{
        "name": "sw", "tracking.mlflow": True, "tracking.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "pretrain.rounds": 1, "finetune.epochs": 1, "baselines.multivae": False, "baselines.ease": False})
    assert cli.main(["sweep", "--no-progress", "lambda_c=0.1,1", *overrides]) == 0
    out = tmp_path / "sw-sweep"
    report = json.loads((out / "sweep.json").read_text())
    assert report["key"] == "pretrain.lambda_c" and [r["value"] for r in report["rows"]] == [0.1, 1.0]
    assert [r["run"] for r in report["rows"]] == ["sw-lambda_c0.1", "sw-lambda_c1.0"]
    for row in report["rows"]:
        saved = json.loads((tmp_path / row["run"] / "results.json").read_text())["models"]["CLLM4Rec"]
        assert row["recall@20"] == pytest.approx(saved["recall@20"])
    assert png_size(out / "sweep.png") == (660, 440) and png_colour_share(out / "sweep.png") > 0.002
    assert "| pretrain.lambda_c |" in (out / "sweep.md").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cllm4rec").experiment_id], max_results=1000)
    sweeps = [r for r in runs if r.data.tags.get("sweep") == "pretrain.lambda_c"]
    assert len(sweeps) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweeps[0].info.run_id]
    assert sorted(r.info.run_name for r in children) == ["sw-lambda_c0.1", "sw-lambda_c1.0"]
    assert {r.data.params["pretrain.lambda_c"] for r in children} == {"0.1", "1.0"}
    assert {"sweep.json", "sweep.md", "sweep.png"} <= {a.path for a in client.list_artifacts(sweeps[0].info.run_id)}
    assert len(client.get_metric_history(sweeps[0].info.run_id, "test_recall_at_20")) == 2
