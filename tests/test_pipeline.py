"""End to end: the CLLM4Rec recipe (trainer/) on a planted dataset with tiny random backbones.

One trained run (tiny LLaMA, MLflow on a SQLite store in a temp folder, Multi-VAE and EASE on) is
shared by the module; a second, smallest-schedule run is shared by the resume tests, which copy its
output folder. Everything is seeded by the config, so every number below is deterministic.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import planted_raw, stop_process_group, tiny_overrides
from cllm4rec.diagnostics import hidden_user_variance, logit_user_share, mean_pairwise_cosine
from cllm4rec.interactions import popularity_entropy
from cllm4rec.metrics import evaluate_scores
from data_prep.errors import DataPrepError
from trainer import cli
from trainer.checkpoint import CheckpointError
from trainer.config import ConfigError, config_from_dict, config_to_dict, load_config
from trainer.evaluate import evaluate, recommend
from trainer.pipeline import Recipe, train
from trainer.serving import evaluate_saved, last_hidden_and_logits, recommend_saved

# The shared run: lr 0.02 with batch 8 lowers every loss within 2 warm-up epochs, 4 rounds and 4
# finetuning epochs (checked with seeds 0, 1, 2), in ~3 s of training on 2 CPU cores. Reviews are left
# out here (they multiply the content steps by 5); the GPT-2 run below keeps them. The warm-up applies
# MR (not the default): without it, λ_c = 1 summed over this batch's IDs pulls the collaborative tables
# toward content tables that drifted in the warm-up, and the item-space loss rises over the rounds.
MAIN_SCHEDULE = {
    "data.reviews": False, "pretrain.warmup_mr": True, "pretrain.warmup_epochs": 2, "pretrain.rounds": 4, "pretrain.lr": 0.02, "finetune.epochs": 4,
    "finetune.patience": 4, "baselines.multivae": True, "baselines.ease": True, "baselines.multivae_epochs": 10,
}
# The smallest schedule (ablations, resume, CLI): one epoch of everything, no reviews, nothing else.
SMALL = {
    "pretrain.warmup_epochs": 1, "pretrain.rounds": 1, "finetune.epochs": 1, "data.reviews": False,
    "baselines.mostpop": False, "baselines.multivae": False, "baselines.ease": False, "tracking.mlflow": False,
}
METRICS = ("recall@20", "recall@40", "ndcg@100")
TIMING_KEYS = ("seconds", "tokens_per_s")  # history values that legitimately differ between runs
N_USERS, N_ITEMS = 80, 40  # planted_raw() defaults


@dataclass
class Trained:
    recipe: Recipe
    rows: dict[str, dict[str, float]]
    out: Path
    tracking_uri: str
    experiment: str
    results: dict[str, Any]


def _config(dataset: Path, backbone: Path, out: Path, **extra: Any):
    return load_config(None, tiny_overrides(dataset, backbone, out, **extra))


def _history_values(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History entries without the wall-clock fields."""
    return [{k: v for k, v in h.items() if not k.endswith(TIMING_KEYS)} for h in history]


def _results(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def _units(out: Path) -> list[str]:
    return [h["unit"] for h in _results(out)["history"]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, planted_dataset, tiny_llama) -> Trained:
    """The shared run, trained once through `Recipe` (kept in memory for comparisons)."""
    root = tmp_path_factory.mktemp("pipeline")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment = "pipeline-test"
    config = _config(planted_dataset, tiny_llama, root / "run", **MAIN_SCHEDULE, **{
        "tracking.mlflow": True, "tracking.tracking_uri": uri, "tracking.experiment": experiment,
    })
    recipe = Recipe(config, progress=False)
    rows = recipe.run()
    return Trained(recipe, rows, root / "run", uri, experiment, _results(root / "run"))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, planted_dataset, tiny_llama) -> Path:
    """The smallest default schedule (5 units: w0, l0, c0, ft0, ft1), trained once; copy before resuming."""
    out = tmp_path_factory.mktemp("small") / "run"
    train(_config(planted_dataset, tiny_llama, out, **{**SMALL, "finetune.epochs": 2}), progress=False)
    return out


@pytest.fixture(scope="module")
def other_split(tmp_path_factory) -> Path:
    """The planted data split with another seed: same counts, another dataset hash."""
    from data_prep.prepare import prepare

    out = tmp_path_factory.mktemp("data-other") / "planted"
    prepare(planted_raw(), out, seed=1)
    return out


def _copy_run(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


# ---- 1. training lowers every loss ----------------------------------------------------------------

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


# ---- 2. beats random ranking clearly -------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_beats_random_ranking_clearly(trained: Trained) -> None:
    recipe = trained.recipe
    train_items, test_items = recipe.splits["train"], recipe.splits["test"]
    ks = dict(recall_ks=[5, 10], ndcg_ks=[10, 100])
    model = evaluate(recipe.engine, recipe.parts.corpora, test_items, prompt="rec", seed=recipe.config.seed,
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


# ---- 3. MLflow store -----------------------------------------------------------------------------

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
    assert entropy == pytest.approx(popularity_entropy(trained.recipe.splits["train"]))
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


# ---- 4. the saved model reloads and recommends identically ---------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_saved_model_recommends_identically(trained: Trained) -> None:
    recipe, model_dir = trained.recipe, trained.out / "model"
    first = recommend_saved(model_dir, None, 5)
    second = recommend_saved(model_dir, None, 5)
    assert first.equals(second)
    assert first.num_rows == N_USERS * 5
    dataset = recipe.parts.dataset
    user_index = {raw: i for i, raw in enumerate(dataset.user_raw)}
    item_index = {raw: j for j, raw in enumerate(dataset.item_raw)}
    table = first.to_pydict()
    saved_items = np.array([item_index[i] for i in table["item"]]).reshape(N_USERS, 5)
    saved_scores = np.array(table["score"], dtype=np.float32).reshape(N_USERS, 5)
    assert [user_index[u] for u in table["user"]] == list(np.repeat(np.arange(N_USERS), 5))
    assert table["rank"] == [1, 2, 3, 4, 5] * N_USERS
    assert table["item_text"] == [dataset.item_text[j] for j in saved_items.ravel()]
    assert np.all(np.diff(saved_scores, axis=1) <= 0)
    # the trained Recipe in memory ranks exactly the same
    items, scores = recommend(recipe.engine, recipe.parts.corpora, np.arange(N_USERS), 5, prompt="rec",
                              seed=recipe.config.seed, batch_size=recipe.config.eval.batch_size)
    np.testing.assert_array_equal(saved_items, items)
    np.testing.assert_allclose(saved_scores, scores, rtol=1e-6)
    # never a training item
    train_items = recipe.splits["train"]
    for u in range(N_USERS):
        assert not set(saved_items[u]) & set(train_items.row(u).tolist()), u
    # selected users keep their order; an unknown raw id is named
    some = recommend_saved(model_dir, ["u7", "u3"], 2).to_pydict()
    assert some["user"] == ["u7", "u7", "u3", "u3"]
    assert some["item"] == [dataset.item_raw[j] for u in ("u7", "u3") for j in saved_items[user_index[u], :2]]
    with pytest.raises(DataPrepError, match="nobody"):
        recommend_saved(model_dir, ["u1", "nobody"], 3)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_backbone_frozen_by_default(trained: Trained, tiny_llama: Path) -> None:
    from cllm4rec.backbone import load_backbone

    pristine, _ = load_backbone(str(tiny_llama), dtype=torch.float32)
    after = trained.recipe.parts.model.backbone.state_dict()
    before = pristine.state_dict()
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"frozen backbone weights changed: {changed}"
    assert not any(p.requires_grad for p in trained.recipe.parts.model.backbone.parameters())


# ---- 5. evaluate_saved reproduces the test metrics ----------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_evaluate_saved_reproduces_results(trained: Trained) -> None:
    reported = trained.results["models"]["CLLM4Rec"]
    again = evaluate_saved(trained.out / "model")
    for key in METRICS:
        assert again[key] == pytest.approx(reported[key], abs=1e-9), key
    assert trained.results["best_epoch"] and trained.results["best_epoch"].startswith("finetune-")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_diagnose_command_measures_user_specificity(trained: Trained, capsys) -> None:
    """`cllm4rec diagnose`: the hidden-state and logit diagnostics of the first N users with validation
    items, from the saved model; its logits are the ones evaluation ranks, and its logit share is the
    one the validation pass computes for the same users."""
    recipe = trained.recipe
    users = np.flatnonzero(recipe.splits["val"].lengths() > 0)[:30]
    assert cli.main(["diagnose", "--model", str(trained.out / "model"), "--users", "30"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{trained.out / 'model'}: 30 users with val items")
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in printed.splitlines()
            if line.startswith("| ") and not line.startswith("| diagnostic")}
    assert len(rows) == 3

    batch = recipe.parts.corpora.scoring_batch(users, "rec", recipe.config.seed)
    hidden, logits = last_hidden_and_logits(recipe.engine, batch)
    torch.testing.assert_close(logits, recipe.engine.item_logits(batch).float(), rtol=1e-5, atol=1e-5)
    assert rows["hidden-state user variance share"] == pytest.approx(hidden_user_variance(hidden), abs=1e-4)
    assert rows["mean pairwise cosine of hidden states"] == pytest.approx(mean_pairwise_cosine(hidden), abs=1e-4)
    assert rows["logit user-specific share"] == pytest.approx(logit_user_share(logits), abs=1e-4)
    validated = evaluate(recipe.engine, recipe.parts.corpora, recipe.splits["val"], prompt="rec", seed=recipe.config.seed,
                         batch_size=8, recall_ks=[20], ndcg_ks=[], max_users=int(users[-1]) + 1, logit_share=True)
    assert validated["logit_user_share"] == pytest.approx(logit_user_share(logits), abs=1e-6)  # other batches
    # planted clusters: users differ, so a trained model's scores do too
    assert 0.05 < logit_user_share(logits) <= 1.0 and mean_pairwise_cosine(hidden) < 1.0


# ---- 6. resume -----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_after_interruption_matches_uninterrupted(small_run, planted_dataset, tiny_llama, tmp_path,
                                                         monkeypatch) -> None:
    config = _config(planted_dataset, tiny_llama, tmp_path / "run", **{**SMALL, "finetune.epochs": 2})
    calls: list[str] = []
    original = Recipe.run_unit

    class Killed(Exception):
        pass

    def interrupted(self, unit, index):
        calls.append(unit.tag)
        if len(calls) == 4:  # killed during the first finetuning epoch
            raise Killed
        return original(self, unit, index)

    def counted(self, unit, index):
        calls.append(unit.tag)
        return original(self, unit, index)

    monkeypatch.setattr(Recipe, "run_unit", interrupted)
    with pytest.raises(Killed):
        train(config, progress=False)
    assert not (tmp_path / "run" / "results.json").exists()
    calls.clear()
    monkeypatch.setattr(Recipe, "run_unit", counted)
    rows = train(config, start="resume", progress=False)
    assert calls == ["finetune-r000-e000", "finetune-r000-e001"]  # nothing finished is redone
    reference = _results(small_run)
    assert _history_values(_results(tmp_path / "run")["history"]) == _history_values(reference["history"])
    for key in METRICS:
        assert rows["CLLM4Rec"][key] == reference["models"]["CLLM4Rec"][key]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_with_more_finetuning_epochs_continues(small_run, planted_dataset, tiny_llama, tmp_path) -> None:
    out = _copy_run(small_run, tmp_path / "run")
    before = _results(out)["history"]
    train(_config(planted_dataset, tiny_llama, out, **{**SMALL, "finetune.epochs": 3}), start="resume", progress=False)
    after = _results(out)["history"]
    assert after[: len(before)] == before
    assert [h["unit"] for h in after[len(before):]] == ["finetune-r000-e002"]
    # the finetune phase run's step count (per-step MLflow metrics) continues from the checkpoint
    from trainer.checkpoint import find_latest

    state = json.loads((find_latest(out / "checkpoints") / "state.json").read_text())
    fine = [h for h in after if h["unit"].startswith("finetune")]
    assert state["phase_steps"] == {"group": "finetune", "steps": {
        prefix: sum(int(h[f"{prefix}_steps"]) for h in fine) for prefix in ("rec", "content")}}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_with_one_more_round_continues(small_run, planted_dataset, tiny_llama, tmp_path) -> None:
    out = _copy_run(small_run, tmp_path / "run")
    before = _results(out)["history"]
    train(_config(planted_dataset, tiny_llama, out, **{**SMALL, "finetune.epochs": 2, "pretrain.rounds": 2}),
          start="resume", progress=False)
    after = _results(out)["history"]
    units = [h["unit"] for h in after]
    assert after[: len(before)] == before
    assert len(units) == len(set(units)), f"units redone: {units}"
    assert sorted(units[len(before):]) == ["cstep-r001-e000", "lstep-r001-e000"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_refuses_a_different_config_or_dataset(small_run, planted_dataset, other_split, tiny_llama,
                                                      tmp_path) -> None:
    out = _copy_run(small_run, tmp_path / "run")
    history = _results(out)["history"]
    base = {**SMALL, "finetune.epochs": 2}
    with pytest.raises(CheckpointError, match=r"pretrain\.lambda_c: checkpoint has 1\.0, current run has 0\.5"):
        train(_config(planted_dataset, tiny_llama, out, **{**base, "pretrain.lambda_c": 0.5}), start="resume",
              progress=False)
    with pytest.raises(CheckpointError, match="dataset_hash"):
        train(_config(other_split, tiny_llama, out, **base), start="resume", progress=False)
    assert _results(out)["history"] == history  # nothing was trained or overwritten


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_refused_resume_keeps_the_run_config(small_run, planted_dataset, tiny_llama, tmp_path) -> None:
    out = _copy_run(small_run, tmp_path / "run")
    saved = (out / "config.yaml").read_text(encoding="utf-8")
    config = _config(planted_dataset, tiny_llama, out, **{**SMALL, "finetune.epochs": 2, "pretrain.lambda_c": 0.5})
    with pytest.raises(CheckpointError):
        train(config, start="resume", progress=False)
    assert (out / "config.yaml").read_text(encoding="utf-8") == saved


# ---- 7. ablations, GPT-2 -------------------------------------------------------------------------

def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# each ablation trains in tests/test_reproduce.py (one `cllm4rec reproduce` run makes every row)


def test_scratch_backbone_is_seeded(planted_dataset, tiny_llama, tmp_path) -> None:
    from trainer.build import build_run

    config = _config(planted_dataset, tiny_llama, tmp_path / "run", **SMALL, ablation="scratch")
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
    recipe = Recipe(_config(planted_dataset, tiny_gpt2, out, **{**SMALL, "data.reviews": True}), progress=False)
    before = _snapshot(recipe.parts.model.backbone)
    rows = recipe.run()
    assert set(rows) == {"CLLM4Rec"}
    # 40 items: every held-out item is among the top 40 candidates; the saved model scores the same
    assert rows["CLLM4Rec"]["recall@40"] == 1.0
    again = evaluate_saved(out / "model")
    assert all(again[k] == pytest.approx(rows["CLLM4Rec"][k], abs=1e-9) for k in METRICS)
    assert [u.split("-")[0] for u in _units(out)] == ["warmup", "lstep", "cstep", "finetune"]
    after = _snapshot(recipe.parts.model.backbone)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert recommend_saved(out / "model", ["u0"], 3).num_rows == 3


# ---- 8. config -----------------------------------------------------------------------------------

def _yaml(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def test_config_unknown_keys_are_errors(tmp_path) -> None:
    recipe = _yaml(tmp_path / "r.yaml", {"pretrain": {"rounds": 2, "bogus_key": 1}})
    with pytest.raises(ConfigError, match=r"pretrain\.bogus_key") as info:
        load_config(str(recipe))
    assert "r.yaml" in str(info.value)
    with pytest.raises(ConfigError, match="'toplevel_typo'"):
        load_config(str(_yaml(tmp_path / "t.yaml", {"toplevel_typo": 1})))
    with pytest.raises(ConfigError, match=r"model\.nonexistent"):
        load_config(None, ["model.nonexistent=1"])
    with pytest.raises(ConfigError, match=r"'bogus'"):
        load_config(None, ["bogus=1"])
    with pytest.raises(ConfigError, match=r"'data\.typo'"):
        load_config(None, ["data.typo.deeper=1"])


@pytest.mark.parametrize("override, key", [
    ("pretrain.lr=fast", "pretrain.lr"),
    ("pretrain.rounds=1.5", "pretrain.rounds"),
    ("pretrain.rounds=true", "pretrain.rounds"),
    ("data.reviews=maybe", "data.reviews"),
    ("eval.recall_ks=20", "eval.recall_ks"),
    ("eval.recall_ks=[20, x]", r"eval.recall_ks\[1\]"),
    ("pretrain=3", "pretrain"),
    ("name=5", "name"),
    ("ablation=bogus", "ablation"),
    ("model.train_backbone=half", "model.train_backbone"),
    ("finetune.mask_mode=random", "finetune.mask_mode"),
])
def test_config_wrong_values_are_named(override, key) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_config_resolution_and_round_trip(tmp_path) -> None:
    config = load_config(str(_yaml(tmp_path / "r.yaml", {"pretrain": {"rounds": 7, "lr": 1}})),
                         ["pretrain.rounds=9", "finetune.max_steps_per_epoch=null", "ablation=cf"])
    assert config.pretrain.rounds == 9  # overrides beat the recipe
    assert config.pretrain.lr == 1.0 and isinstance(config.pretrain.lr, float)
    assert config.finetune.max_steps_per_epoch is None
    assert config.pretrain.content is False and config.pretrain.lambda_c == 0.0  # the ablation preset
    assert config_from_dict(config_to_dict(config)) == config
    for shipped in ("quick", "paper"):
        assert load_config(shipped).name == shipped
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["pretrain.rounds"])
    with pytest.raises(ConfigError, match="nonexistent"):
        load_config("nonexistent")
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_cli_user_errors_exit_2(tmp_path, capsys) -> None:
    assert cli.main(["train", "--recipe", "nonexistent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nonexistent" in err[0]
    assert cli.main(["train", "--recipe", "quick", "pretrain.bogus=1"]) == 2
    assert "pretrain.bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    assert "train" in capsys.readouterr().out


# ---- 9. CLI end to end ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_train_recommend_evaluate(planted_dataset, tiny_llama, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    recipe = _yaml(tmp_path / "tiny.yaml", {
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
    reported = _results(out)["models"]["CLLM4Rec"]
    assert f"ndcg@100={reported['ndcg@100']:.4f}" in printed

    assert cli.main(["recommend", "--model", str(out / "model"), "--users", "ghost", "--top", "3"]) == 2
    assert "ghost" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", str(tmp_path / "no-model")]) == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_accepts_a_checkpoint_older_than_a_config_key(small_run, planted_dataset, tiny_llama, tmp_path) -> None:
    """A key added to the code after the checkpoint was written counts as equal when at its default."""
    import json

    import yaml

    from trainer.checkpoint import _write_complete, find_latest

    out = _copy_run(small_run, tmp_path / "run")
    latest = find_latest(out / "checkpoints")
    config = yaml.safe_load((latest / "config.yaml").read_text())
    del config["data"]["shuffle_buffer"]
    (latest / "config.yaml").write_text(yaml.safe_dump(config))
    identity = json.loads((latest / "identity.json").read_text())
    (latest / "identity.json").write_text(json.dumps({**identity, "config_hash": "from-older-code"}))
    _write_complete(latest)
    train(_config(planted_dataset, tiny_llama, out, **{**SMALL, "finetune.epochs": 3}), start="resume", progress=False)
    assert [h["unit"] for h in _results(out)["history"]][-1] == "finetune-r000-e002"


# ---- 5. the MLflow pyfunc model and its REST endpoint --------------------------------------------

def _post(url: str, payload: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _rows(table) -> list[tuple]:
    data = table.to_pydict() if hasattr(table, "to_pydict") else table
    return [(u, int(r), i, round(float(s), 4), t) for u, r, i, s, t in
            zip(data["user"], data["rank"], data["item"], data["score"], data["item_text"])]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pyfunc_model_round_trip(trained: Trained) -> None:
    """The logged pyfunc model (the installed loader, no code, nothing pickled) loads with mlflow.pyfunc and answers
    like `cllm4rec recommend`; extra history joins the prompt and is excluded; unknown ids are named."""
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    model_dir = trained.out / "pyfunc"
    assert (model_dir / "MLmodel").is_file() and not list(model_dir.rglob("*.pkl"))
    assert "loader_module: trainer.pyfunc_model" in (model_dir / "MLmodel").read_text()
    model = mlflow.pyfunc.load_model(str(model_dir))
    got = model.predict(pd.DataFrame({"user": ["u7", "u3"]}), params={"top_m": 3})
    want = recommend_saved(trained.out / "model", ["u7", "u3"], 3)
    assert _rows({k: got[k].tolist() for k in got.columns}) == _rows(want)
    first = want.to_pydict()["item"][0]
    extra = model.predict(pd.DataFrame({"user": ["u7"], "history": [[first]]}), params={"top_m": 3})
    assert first not in extra["item"].tolist() and len(extra) == 3
    with pytest.raises(MlflowException, match="unknown user id.*'nobody'"):
        model.predict(pd.DataFrame({"user": ["u7", "nobody"]}))
    with pytest.raises(MlflowException, match="unknown item id.*'no-such-item'"):
        model.predict(pd.DataFrame({"user": ["u7"], "history": [["no-such-item"]]}))
    with pytest.raises(MlflowException, match="record 1: 'history' must be a list of item ids, got 'i3'"):
        model.predict(pd.DataFrame({"user": ["u7", "u3"], "history": [None, "i3"]}))


def test_extra_history_follows_the_training_items_in_the_prompt(trained: Trained, monkeypatch) -> None:
    """A served user's prompt is its training items in their order, then the new history (a repeat of a
    training item stays where it was); an empty history answers exactly as no history."""
    from trainer.serving import Recommender

    recommender = Recommender.load(trained.out / "model")
    dataset, train = recommender.parts.dataset, recommender.parts.corpora.train
    u7, u3 = dataset.user_raw.index("u7"), dataset.user_raw.index("u3")
    assert recommender.recommend(["u7", "u3"], 5, [[], []]).equals(recommender.recommend(["u7", "u3"], 5))
    new = next(j for j in range(N_ITEMS) if j not in train.row(u7))
    prompts: list[list[int]] = []
    scoring_batch = recommender.parts.corpora.scoring_batch
    monkeypatch.setattr(recommender.parts.corpora, "scoring_batch",
                        lambda users, prompt, seed, histories: prompts.extend(h.tolist() for h in histories)
                        or scoring_batch(users, prompt, seed, histories))
    again = dataset.item_raw[int(train.row(u7)[0])]
    table = recommender.recommend(["u7", "u3"], 5, [[dataset.item_raw[new], again], []]).to_pydict()
    assert sorted(prompts) == sorted([[*train.row(u7).tolist(), new], train.row(u3).tolist()])
    assert dataset.item_raw[new] not in [i for u, i in zip(table["user"], table["item"]) if u == "u7"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_served_model_answers_rest_requests(trained: Trained, tmp_path: Path) -> None:
    """`mlflow models serve --env-manager local` on 127.0.0.1 answers like `cllm4rec recommend`; an
    unknown user or item id gets a 400 naming it, and the server keeps answering afterwards."""
    import time
    import urllib.request

    from trainer.distributed import free_port

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    bin_dir = Path(sys.executable).parent  # mlflow starts `uvicorn` from PATH
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", str(trained.out / "pyfunc"),
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not answer /ping within 180 s"
            time.sleep(1)
        url = f"http://127.0.0.1:{port}/invocations"
        status, body = _post(url, {"dataframe_records": [{"user": "u7"}, {"user": "u3"}], "params": {"top_m": 3}})
        assert status == 200, body
        want = _rows(recommend_saved(trained.out / "model", ["u7", "u3"], 3))
        records = body["predictions"]
        assert _rows({k: [r[k] for r in records] for k in ("user", "rank", "item", "score", "item_text")}) == want
        status, body = _post(url, {"dataframe_records": [{"user": "nobody"}]})
        assert status == 400 and "nobody" in body["message"], body
        status, body = _post(url, {"dataframe_records": [{"user": "u7", "history": ["no-such-item"]}]})
        assert status == 400 and "no-such-item" in body["message"], body
        status, body = _post(url, {"dataframe_records": [{"user": "u3"}], "params": {"top_m": 3}})
        assert status == 200 and [r["item"] for r in body["predictions"]] == [w[2] for w in want[3:]]
        # records with and without a history in one request (pandas gives the latter NaN)
        status, body = _post(url, {"dataframe_records": [{"user": "u3"}, {"user": "u7", "history": [want[0][2]]}],
                                   "params": {"top_m": 3}})
        assert status == 200, body
        assert [r["item"] for r in body["predictions"] if r["user"] == "u3"] == [w[2] for w in want[3:]]
        assert want[0][2] not in [r["item"] for r in body["predictions"] if r["user"] == "u7"]
    finally:
        stop_process_group(server)
        log.close()


# ---- 6. embeddings for downstream models (CLLM4Rec-Emb) -------------------------------------------

def test_export_embeddings_round_trip(trained: Trained, tmp_path: Path) -> None:
    """`cllm4rec export-embeddings`: the four tables as safetensors, and per-user / per-item Parquet rows
    (raw id, collab and content vectors) equal to the saved tables; a model/dataset mismatch is named."""
    from safetensors.torch import load_file

    from trainer.checkpoint import load_model

    out = tmp_path / "emb"
    assert cli.main(["export-embeddings", "--model", str(trained.out / "model"), "--out", str(out)]) == 0
    saved = load_model(trained.out / "model").tables
    tables = load_file(str(out / "embeddings.safetensors"))
    assert set(tables) == set(saved) and all(torch.equal(tables[k], saved[k].float()) for k in saved)
    dataset = trained.recipe.parts.dataset
    users, items = pq.read_table(out / "users.parquet").to_pydict(), pq.read_table(out / "items.parquet").to_pydict()
    assert users["user"] == list(dataset.user_raw) and items["item"] == list(dataset.item_raw)
    assert items["text"] == list(dataset.item_text)
    np.testing.assert_array_equal(np.array(users["collab"], dtype=np.float32), saved["collab_user"].numpy())
    np.testing.assert_array_equal(np.array(items["content"], dtype=np.float32), saved["content_item"].numpy())
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.safetensors", "items.parquet", "users.parquet"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_towers_beat_random_ranking(trained: Trained, tmp_path: Path) -> None:
    """`cllm4rec two-tower`: CLLM4Rec-Emb (towers over the exported embeddings) and the ID-only
    Two-Tower, trained with the sampled softmax, both rank the planted test items far above random."""
    recipe = trained.recipe
    train_items, test_items = recipe.splits["train"], recipe.splits["test"]
    random_runs = [evaluate_scores(lambda rows, g=torch.Generator().manual_seed(s): torch.rand(len(rows), N_ITEMS, generator=g),
                                   train_items, test_items, (), (100,)) for s in range(5)]
    rand = {"ndcg@100": float(np.mean([r["ndcg@100"] for r in random_runs]))}
    out = tmp_path / "tt"
    assert cli.main(["two-tower", "--model", str(trained.out / "model"), "--epochs", "20", "--batch-size", "64",
                     "--no-progress", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["models"]
    assert set(rows) == {"CLLM4Rec-Emb", "Two-Tower"}
    for name, metrics in rows.items():
        # measured: CLLM4Rec-Emb 0.607, Two-Tower 0.601, random 0.293
        assert metrics["ndcg@100"] > rand["ndcg@100"] + 0.2, (name, metrics, rand)
        assert metrics["recall@20"] > 0 and 0 <= metrics["best_epoch"] < 20
