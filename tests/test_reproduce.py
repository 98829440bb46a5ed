"""`cllm4rec reproduce`: every row of the paper's comparison on one split, the table files, tagged MLflow runs."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from cllm4rec.backbone import load_backbone

from conftest import tiny_overrides
from test_curves import png_size
from trainer import cli
from trainer.config import ConfigError
from trainer.checkpoint import load_model
from trainer.reproduce import row_configs
from trainer.serving import evaluate_saved

ROWS = ["MostPop", "Multi-VAE", "EASE", "Two-Tower", "LLM-Scratch", "LLM-CF", "LLM-FtAll", "LLM-FtAll (LoRA)", "LLM-FixOrd", "LLM-PreRec",
        "CLLM4Rec-Emb", "CLLM4Rec"]
COLUMNS = ["recall@10", "recall@20", "recall@40", "ndcg@10", "ndcg@100"]


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


ABLATIONS = {"scratch": "LLM-Scratch", "cf": "LLM-CF", "ftall": "LLM-FtAll", "ftall-lora": "LLM-FtAll (LoRA)",
             "fixord": "LLM-FixOrd", "prerec": "LLM-PreRec"}


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
    assert list(report["rows"]) == ROWS and report["columns"] == COLUMNS
    for name, row in report["rows"].items():
        assert all(0.0 <= row[c] <= 1.0 for c in COLUMNS), name
    for ablation, name in (("cllm4rec", "CLLM4Rec"), *ABLATIONS.items()):
        saved = json.loads((root / f"rp-{ablation}" / "results.json").read_text())["models"]
        assert set(saved) == {name}  # no baseline inside a training row
        assert all(report["rows"][name][c] == pytest.approx(saved[name][c]) for c in COLUMNS)
        config = yaml.safe_load((root / f"rp-{ablation}" / "config.yaml").read_text())
        assert config["eval"]["selection_metrics"] == ["recall@20", "recall@40", "ndcg@100"]
    table = (root / "rp-reproduce" / "table.md").read_text()
    assert all(f"| {name} |" in table for name in ROWS) and "Recall@10" in table and "NDCG@10 " in table
    assert png_size(root / "rp-reproduce" / "table.png")[0] > 600

    client = MlflowClient(tracking_uri=reproduced.uri)
    runs = client.search_runs([client.get_experiment_by_name("cllm4rec").experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.info.run_name == "rp-reproduce"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["row"] for r in children) == sorted(ROWS)
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
