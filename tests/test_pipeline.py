"""End to end: a CLLM4Rec training run (trainer/) on a planted dataset with tiny random backbones:
losses fall, ranking beats random, MLflow holds the runs, the curves are drawn, the other backbones
(GPT-2, a random LLaMA) train, and the command line trains, recommends and evaluates.

The shared trained run is conftest's `trained` fixture. Everything is seeded by the config, so every
number below is deterministic.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import METRICS, N_ITEMS, N_USERS, SMALL, Trained, run_config, run_results, run_units, write_yaml
from cllm4rec.interactions import popularity_entropy
from cllm4rec.metrics import evaluate_scores
from trainer import cli
from trainer.evaluate import evaluate
from trainer.pipeline import TrainingRun
from trainer.serving import evaluate_saved, recommend_saved


# ---- training lowers every loss ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_training_lowers_every_loss(trained: Trained) -> None:
    history = trained.results["history"]
    by_phase: dict[str, list[dict[str, Any]]] = {}
    for h in history:
        by_phase.setdefault(h["unit"].split("-")[0], []).append(h)
    assert [len(by_phase[p]) for p in ("warmup", "lstep", "cstep", "finetune")] == [2, 4, 4, 4]
    content = by_phase["warmup"] + by_phase["cstep"]  # the content LLM during pretraining
    lsteps, finetune = by_phase["lstep"], by_phase["finetune"]
    checks = {
        "content_lm_loss (pretraining)": (content[0]["content_lm_loss"], content[-1]["content_lm_loss"]),
        "collab_lm_loss": (lsteps[0]["collab_lm_loss"], lsteps[-1]["collab_lm_loss"]),
        "collab_loss": (lsteps[0]["collab_loss"], lsteps[-1]["collab_loss"]),
        "rec_lm_loss": (finetune[0]["rec_lm_loss"], finetune[-1]["rec_lm_loss"]),
        "rec_loss": (finetune[0]["rec_loss"], finetune[-1]["rec_loss"]),
        # The content epochs of finetuning pull toward moving collaborative tables: their LM part may
        # rise a little while the objective (LM + MR) they minimise falls.
        "content_loss (finetuning)": (finetune[0]["content_loss"], finetune[-1]["content_loss"]),
    }
    rising = {name: pair for name, pair in checks.items() if not pair[1] < pair[0]}
    assert not rising, f"losses that did not fall (first, last): {rising}"
    for h in history:
        assert all(np.isfinite(v) for k, v in h.items() if k != "unit"), h
    # the item-space LM starts near uniform over the catalogue and must get below it
    assert lsteps[-1]["collab_lm_loss"] < np.log(N_ITEMS) - 0.2


# ---- beats random ranking clearly -------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_beats_random_ranking_clearly(trained: Trained) -> None:
    run = trained.run
    train_items, test_items = run.splits["train"], run.splits["test"]
    ks = dict(recall_ks=[5, 10], ndcg_ks=[10, 100])
    model = evaluate(run.engine, run.parts.corpora, test_items, prompt="rec", seed=run.config.seed,
                     batch_size=64, **ks)
    random_runs = []
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        random_runs.append(evaluate_scores(lambda rows: torch.rand(len(rows), N_ITEMS, generator=generator),
                                           train_items, test_items, (5, 10), (10, 100)))
    rand = {k: float(np.mean([r[k] for r in random_runs])) for k in ("recall@5", "recall@10", "ndcg@10", "ndcg@100")}
    # Measured (seeds 0/1/2): model recall@5 0.94/0.81/0.89, ndcg@10 0.58/0.55/0.61, ndcg@100
    # 0.59/0.57/0.61; random 0.16, 0.15, 0.29.
    assert model["recall@5"] > rand["recall@5"] + 0.4, (model, rand)
    assert model["ndcg@10"] > rand["ndcg@10"] + 0.25, (model, rand)
    assert model["ndcg@100"] > rand["ndcg@100"] + 0.15, (model, rand)
    # the results table reports the same model on the same split
    reported = trained.rows["CLLM4Rec"]
    assert reported["ndcg@100"] == pytest.approx(model["ndcg@100"], abs=1e-9)
    assert reported["n_users_evaluated"] == N_USERS
    assert set(trained.rows) == {"CLLM4Rec", "MostPop", "Multi-VAE", "EASE"}
    table = (trained.out / "results.md").read_text(encoding="utf-8").splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == ["CLLM4Rec", "MostPop", "Multi-VAE", "EASE"]
    assert reported["ndcg@100"] > trained.rows["MostPop"]["ndcg@100"] + 0.1  # more than popularity


# ---- MLflow store -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mlflow_store_holds_parent_and_nested_runs(trained: Trained) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=trained.tracking_uri)
    experiment = client.get_experiment_by_name(trained.experiment)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["model"] == "CLLM4Rec" and parent.data.tags["ablation"] == "none"
    assert parent.data.params["pretrain.lambda_c"] == "1.0"
    assert parent.data.params["pretrain.rounds"] == "4"
    test_metrics = trained.results["models"]["CLLM4Rec"]
    assert parent.data.metrics["test_ndcg_at_100"] == pytest.approx(test_metrics["ndcg@100"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.md", "results.json", "config.yaml", "curves.png", "model"} <= artifacts

    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    rounds = [f"round-{r:03d}-{s}-step" for r in range(1, 5) for s in "LC"]
    assert set(children) == {"content-warmup", *rounds, "finetune", "test", "baselines"}
    assert len(children) == len(runs) - 1  # one run per phase, no strays
    assert all(r.info.status == "FINISHED" for r in children.values())

    def history(run_name: str, key: str) -> list[float]:
        points = client.get_metric_history(children[run_name].info.run_id, key)
        return [p.value for p in sorted(points, key=lambda p: p.step)]

    assert len(history("content-warmup", "content_lm_loss")) == 2
    assert len(history("content-warmup", "content_mr_loss")) == 2
    entropy = trained.results["popularity_entropy"]
    assert entropy == pytest.approx(popularity_entropy(trained.run.splits["train"]))
    for name in rounds:
        kind = "collab" if "-L-" in name else "content"
        assert len(history(name, f"{kind}_lm_loss")) == 1, name
        assert len(history(name, f"{kind}_mr_loss")) == 1, name
        assert history(name, "collab_popularity_entropy") == ([pytest.approx(entropy)] if kind == "collab" else [])
    fine = [h for h in trained.results["history"] if h["unit"].startswith("finetune")]
    for key in ("rec_lm_loss", "rec_mr_loss", "val_recall_at_20", "val_ndcg_at_100", "val_selection",
                "val_logit_user_share"):
        assert history("finetune", key) == pytest.approx([h[key.replace("_at_", "@")] for h in fine], abs=1e-6), key
    assert all(0.0 < h["val_logit_user_share"] <= 1.0 for h in fine)

    # per-step losses: one point per optimizer step, numbered on across the epochs of a phase run; the
    # epoch's mean MR term and loss are the means of its steps'
    def steps(run_name: str, key: str) -> list[tuple[int, float]]:
        points = client.get_metric_history(children[run_name].info.run_id, key)
        return sorted((p.step, p.value) for p in points)

    units = {h["unit"]: h for h in trained.results["history"]}
    phase_units = {"content-warmup": [u for u in units if u.startswith("warmup")],
                   "finetune": [h["unit"] for h in fine],
                   **{name: [f"{'lstep' if '-L-' in name else 'cstep'}-r{int(name[6:9]) - 1:03d}-e000"] for name in rounds}}
    for name, tags in phase_units.items():
        for prefix in {"content-warmup": ["content"], "finetune": ["rec", "content"]}.get(
                name, ["collab" if "-L-" in name else "content"]):
            counts = [int(units[t][f"{prefix}_steps"]) for t in tags]
            lm = steps(name, f"step_{prefix}_lm_loss")
            assert [s for s, _ in lm] == list(range(1, sum(counts) + 1)), (name, prefix)
            for key in ("mr_loss", "loss"):
                values = [v for _, v in steps(name, f"step_{prefix}_{key}")]
                bounds = np.cumsum([0, *counts])
                for tag, a, b in zip(tags, bounds[:-1], bounds[1:]):
                    expected = units[tag][f"{prefix}_{key}"]  # (rounded to 6 decimals in the history)
                    assert np.mean(values[a:b]) == pytest.approx(expected, rel=1e-5, abs=2e-6), (name, key)
    test = children["test"].data.metrics
    for key in METRICS:
        assert test[f"test_{key.replace('@', '_at_')}"] == pytest.approx(test_metrics[key])
    base = children["baselines"].data.metrics
    assert base["MostPop_ndcg_at_100"] == pytest.approx(trained.results["models"]["MostPop"]["ndcg@100"])
    assert base["Multi-VAE_ndcg_at_100"] == pytest.approx(trained.results["models"]["Multi-VAE"]["ndcg@100"])
    assert base["EASE_recall_at_20"] == pytest.approx(trained.results["models"]["EASE"]["recall@20"])


def test_run_writes_its_training_curves(trained: Trained) -> None:
    """curves.png (LM/MR losses per phase, validation per finetuning epoch) is a PNG next to the
    results; the MLflow test above finds it among the parent run's artifacts."""
    from test_curves import curves, png_colour_share, png_size
    from trainer.curves import training_figure

    assert png_size(trained.out / "curves.png") == (1430, 462) and png_colour_share(trained.out / "curves.png") > 0.005
    history = trained.results["history"]
    lm, _, val = training_figure(history).axes
    # MAIN_SCHEDULE: 4 L-steps, 4 finetuning epochs (patience 4: none stopped early), 3 validation metrics
    assert curves(lm)["collaborative LM"] == [h["collab_lm_loss"] for h in history if h["unit"].startswith("lstep")]
    assert len(curves(lm)["collaborative LM"]) == 4 and len(curves(lm)["finetuning (multinomial)"]) == 4
    assert {k: len(v) for k, v in curves(val).items()} == {"ndcg@100": 4, "recall@20": 4, "recall@40": 4}


# ---- ablations, GPT-2 -------------------------------------------------------------------------

def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# each ablation trains in tests/test_reproduce.py (one `cllm4rec reproduce` run makes every row)


def test_scratch_backbone_is_seeded(planted_dataset, tiny_llama, tmp_path) -> None:
    from trainer.build import build_run

    config = run_config(planted_dataset, tiny_llama, tmp_path / "run", **SMALL, ablation="scratch")
    first = build_run(config).model.backbone.state_dict()
    torch.rand(10)  # whatever ran before must not matter
    second = build_run(config).model.backbone.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    config.seed = 1
    other = build_run(config).model.backbone.state_dict()
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gpt2_backbone_runs_the_default_pipeline(planted_dataset, tiny_gpt2, tmp_path) -> None:
    out = tmp_path / "run"
    # reviews on: byte-level BPE over review texts too
    run = TrainingRun(run_config(planted_dataset, tiny_gpt2, out, **{**SMALL, "data.reviews": True}), progress=False)
    before = _snapshot(run.parts.model.backbone)
    rows = run.run()
    assert set(rows) == {"CLLM4Rec"}
    # 40 items: every held-out item is among the top 40 candidates; the saved model scores the same
    assert rows["CLLM4Rec"]["recall@40"] == 1.0
    again = evaluate_saved(out / "model")
    assert all(again[k] == pytest.approx(rows["CLLM4Rec"][k], abs=1e-9) for k in METRICS)
    assert [u.split("-")[0] for u in run_units(out)] == ["warmup", "lstep", "cstep", "finetune"]
    after = _snapshot(run.parts.model.backbone)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert recommend_saved(out / "model", ["u0"], 3).num_rows == 3


# ---- CLI end to end ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_train_recommend_evaluate(planted_dataset, tiny_llama, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    recipe = write_yaml(tmp_path / "tiny.yaml", {
        "name": "tiny", "output_dir": str(out),
        "data": {"dataset": str(planted_dataset), "reviews": False},
        "model": {"backbone": str(tiny_llama), "dtype": "float32"},
        "pretrain": {"warmup_epochs": 1, "rounds": 1, "batch_size": 8, "lr": 0.01},
        "finetune": {"epochs": 1, "batch_size": 8, "lr": 0.01},
        "baselines": {"multivae": False, "ease": False},
        "tracking": {"mlflow": False},
    })
    assert cli.main(["train", "--recipe", str(recipe), "--no-progress", "eval.batch_size=64"]) == 0
    table = (out / "results.md").read_text(encoding="utf-8")
    assert table.startswith("| Model | Recall@20 | Recall@40 | NDCG@100 |") and "| CLLM4Rec |" in table
    assert yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))["eval"]["batch_size"] == 64
    printed = capsys.readouterr().out.splitlines()
    assert [line for line in printed if line.startswith("serve: ")] == [f"serve: cllm4rec serve {out / 'model'}"]
    mlflow_serve = [line.split() for line in printed if line.startswith("or with MLflow: ")]
    assert len(mlflow_serve) == 1 and mlflow_serve[0][3:7] == ["mlflow", "models", "serve", "-m"], mlflow_serve
    port = int(mlflow_serve[0][mlflow_serve[0].index("-p") + 1])  # not MLflow's default 5000, which `mlflow ui` takes
    assert port != 5000
    assert " ".join(mlflow_serve[0]) == f"or with MLflow: mlflow models serve -m {out / 'pyfunc'} --env-manager local -p {port}"

    parquet = tmp_path / "r.parquet"
    assert cli.main(["recommend", "--model", str(out / "model"), "--users", "u5", "--top", "3", "--out", str(parquet)]) == 0
    recs = pq.read_table(parquet).to_pydict()
    assert recs["user"] == ["u5"] * 3 and recs["rank"] == [1, 2, 3]
    assert set(recs) == {"user", "rank", "item", "score", "item_text"}
    capsys.readouterr()
    assert cli.main(["recommend", "--model", str(out / "model"), "--users", "u5", "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()  # a plain table: a header, one line per recommendation
    assert lines[0].split() == ["user", "rank", "item", "score", "item_text"] and len(lines) == 4
    assert lines[1].split()[:4] == ["u5", "1", recs["item"][0], f"{recs['score'][0]:.4f}"]

    assert cli.main(["evaluate", "--model", str(out / "model")]) == 0
    printed = capsys.readouterr().out
    reported = run_results(out)["models"]["CLLM4Rec"]
    assert f"ndcg@100={reported['ndcg@100']:.4f}" in printed

    assert cli.main(["recommend", "--model", str(out / "model"), "--users", "ghost", "--top", "3"]) == 2
    assert "ghost" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", str(tmp_path / "no-model")]) == 2
