"""Cold-start evaluation: the hold-out split (`prepare cold-start`), the metrics of its two rankings, each
baseline on a planted case, and `evaluate --cold-start` end to end.

The module shares one split of the planted dataset (a quarter of its 40 items held out), one
smallest-schedule run on it (tiny LLaMA) and one evaluation of that run, with k = 3.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL, planted_raw, tiny_overrides
from cllm4rec.baselines.content import mean_word_vectors, profile_scores, random_scores, tfidf_vectors
from cllm4rec.interactions import UserItems
from data_prep.cold_start import INTERACTIONS, ITEMS, read_heldout, write_cold_start
from data_prep.errors import DataPrepError
from data_prep.prepare import prepare
from data_prep.processed import load_processed
from trainer import cli
from trainer.cold_start_scoring import FOLD_IN, RANDOM, RANDOM_COLLAB, ROW_KEYS, TFIDF, cold_start_metrics, model_scorers
from trainer.config import load_config
from trainer.pipeline import train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FRACTION, SEED, K = 0.25, 1, 3


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The planted dataset and its cold-start split, made by the CLI."""
    root = tmp_path_factory.mktemp("cold-start")
    prepare(planted_raw(), root / "data", seed=0)
    assert cli.main(["prepare", "cold-start", str(root / "data"), "--fraction", str(FRACTION), "--seed", str(SEED),
                     "--out", str(root / "cold")]) == 0
    return root


@pytest.fixture(scope="module")
def evaluated(root: Path, tiny_llama) -> dict:
    """One run on the split and its `evaluate --cold-start` (MLflow in the default store beside the run)."""
    train(load_config(None, tiny_overrides(root / "cold", tiny_llama, root / "run", **SMALL)), progress=False)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        code = cli.main(["evaluate", "--model", str(root / "run" / "model"), "--cold-start", "--k", str(K),
                         "--passes", "2", "--no-progress"])
    return {"code": code, "out": root / "run" / "cold-start", "stdout": printed.getvalue()}


def pairs(users, items) -> set[tuple[str, str]]:
    return set(zip(users, items))


# ---- the split ------------------------------------------------------------------------------------

def test_split_removes_every_interaction_of_the_heldout_items(root: Path) -> None:
    source, variant, held = load_processed(root / "data"), load_processed(root / "cold"), read_heldout(root / "cold")
    assert len(held.texts) == 10 and not set(held.texts) & set(variant.item_raw)
    assert all(held.texts[raw] == source.item_text[source.item_raw.index(raw)] for raw in held.texts)

    def raw_pairs(ds) -> set[tuple[str, str]]:
        return pairs([ds.user_raw[u] for u in ds.inter_user], [ds.item_raw[j] for j in ds.inter_item])

    everything, kept, aside = raw_pairs(source), raw_pairs(variant), pairs(held.users, held.items)
    assert aside == {(u, j) for u, j in everything if j in held.texts}  # every interaction of a held-out item
    dropped = set(source.user_raw) - set(variant.user_raw)  # left with fewer than 3 interactions
    assert kept == {(u, j) for u, j in everything - aside if u not in dropped}
    info = held.info
    assert (info["seed"], info["fraction"], info["heldout_items"], info["heldout_interactions"]) == (
        SEED, FRACTION, 10, len(aside))
    assert info["users_dropped"] == len(dropped) and variant.seed == source.seed
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # written by rename, no leftovers


def test_split_is_seeded(root: Path, tmp_path: Path) -> None:
    write_cold_start(root / "data", tmp_path / "again", fraction=FRACTION, seed=SEED)
    for name in ("meta.json", ITEMS, INTERACTIONS, "interactions.parquet", "items.parquet", "users.parquet"):
        assert (tmp_path / "again" / name).read_bytes() == (root / "cold" / name).read_bytes(), name
    write_cold_start(root / "data", tmp_path / "other", fraction=FRACTION, seed=SEED + 1)
    assert set(read_heldout(tmp_path / "other").texts) != set(read_heldout(root / "cold").texts)


def test_split_errors_name_the_file_or_option(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataPrepError, match=r"--fraction must lie in \(0, 1\), got 1.5"):
        write_cold_start(root / "data", tmp_path / "x", fraction=1.5)
    with pytest.raises(DataPrepError, match=r"data/meta.json: no field 'cold_start': .* is not a cold-start split"):
        read_heldout(root / "data")
    shutil.copytree(root / "cold", tmp_path / "changed")
    (tmp_path / "changed" / ITEMS).write_bytes(b"not parquet")
    with pytest.raises(DataPrepError, match=r"changed/heldout/items.parquet: sha256 differs from meta.json"):
        read_heldout(tmp_path / "changed")
    assert not (tmp_path / "x").exists()


# ---- metrics and scorers --------------------------------------------------------------------------

def test_metrics_equal_hand_computed_values() -> None:
    """Items 0, 1 old and 2..5 held out. User 0: trained on 0, targets {3, 5}; user 1: targets {4}."""
    train = UserItems.from_lists([[0], []], 6)
    targets = UserItems.from_lists([[3, 5], [4]], 6)
    scores = torch.tensor([9.0, 8.0, 4.0, 3.0, 1.0, 2.0])
    metrics = cold_start_metrics(lambda rows: scores.repeat(len(rows), 1), train, targets, n_old=2, k=2, batch_size=1)
    # held-out ranking 2, 3, 5, 4: user 0 hits at rank 2 of 2 targets, user 1 misses
    ndcg_user0 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert metrics["held-out recall@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert metrics["held-out ndcg@2"] == pytest.approx((ndcg_user0 + 0) / 2)
    # whole catalogue: user 0 gets 1, 2 (0 is a training item), user 1 gets 0, 1: no hit
    assert metrics["catalogue recall@2"] == 0 and metrics["catalogue ndcg@2"] == 0
    three = cold_start_metrics(lambda rows: scores.repeat(len(rows), 1), train, targets, n_old=2, k=3, batch_size=2)
    assert three["catalogue recall@3"] == pytest.approx((1 / 2 + 0) / 2)  # user 0: 1, 2, 3
    assert three["catalogue ndcg@3"] == pytest.approx((0.5 / (1 + 1 / np.log2(3)) + 0) / 2)


def test_tfidf_puts_the_item_matching_the_history_first() -> None:
    texts = ["red apple fruit", "blue ocean water", "green apple pie", "deep ocean fish", ""]
    history = UserItems.from_lists([[0], [1], []], len(texts))
    scores = profile_scores(tfidf_vectors(texts), history, np.array([0, 1, 2]))
    assert scores.shape == (3, 5)
    assert int(scores[0, 1:].argmax()) + 1 == 2 and int(scores[1, 2:].argmax()) + 2 == 3
    assert scores[0, 0] == pytest.approx(1.0) and float(scores[:, 4].abs().max()) == 0  # no text: 0
    assert float(scores[2].abs().max()) == 0  # no history: 0


def test_mean_word_embedding_puts_the_item_closest_in_meaning_first() -> None:
    words = torch.nn.Embedding(4, 2)
    with torch.no_grad():
        words.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [-1.0, 0.0]]))
    vectors = mean_word_vectors([[0], [3], [2, 2], [1], []], words)
    assert np.allclose(np.linalg.norm(vectors[:4], axis=1), 1) and not vectors[4].any()
    scores = profile_scores(vectors, UserItems.from_lists([[0]], 5), np.array([0]))[0]
    assert scores[1:4].argsort(descending=True).tolist() == [1, 2, 0]  # items 2, 3, 1
    assert scores[1] == pytest.approx(-1.0)


def test_random_scores_are_seeded_per_user() -> None:
    both = random_scores(np.array([3, 5]), 50, seed=0)
    assert torch.equal(both[1], random_scores(np.array([5]), 50, seed=0)[0])
    assert not torch.equal(both[0], both[1]) and not torch.equal(both, random_scores(np.array([3, 5]), 50, seed=1))
    assert float(both.min()) >= 0 and float(both.max()) < 1


def test_random_collaborative_rows_change_only_the_new_items() -> None:
    generator = torch.Generator().manual_seed(0)
    states, table = torch.randn(3, 8, generator=generator), torch.randn(10, 8, generator=generator)
    users = np.array([4, 1, 7])
    scorers = model_scorers(states, users, table, n_old=6, random_std=2.0, seed=0)
    rows = np.array([7, 4])
    folded, random = scorers[FOLD_IN](rows), scorers[RANDOM_COLLAB](rows)
    assert torch.allclose(folded, states[[2, 0]] @ table.T)
    assert torch.equal(folded[:, :6], random[:, :6]) and not torch.allclose(folded[:, 6:], random[:, 6:])


# ---- end to end -----------------------------------------------------------------------------------

def test_evaluate_cold_start_writes_the_table_and_logs_it(root: Path, evaluated: dict) -> None:
    import mlflow

    assert evaluated["code"] == 0
    out, printed = evaluated["out"], evaluated["stdout"]
    report = json.loads((out / "results.json").read_text())
    columns = [f"{s} {m}@{K}" for s in ("held-out", "catalogue") for m in ("recall", "ndcg")]
    assert report["columns"] == columns and report["rows"] == list(ROW_KEYS)
    assert set(report["models"]) == set(ROW_KEYS) and all(0 <= report["models"][row][c] <= 1 for row in ROW_KEYS for c in columns)
    assert report["items"] == {"model": 30, "heldout": 10} and report["users_evaluated"] > 40
    assert report["cold_start"]["seed"] == SEED and (out / "model" / "COMPLETE").is_file()
    # planted: item texts name their cluster, and so do a user's history items
    assert report["models"][TFIDF]["held-out recall@3"] > report["models"][RANDOM]["held-out recall@3"] + 0.2
    assert "| CLLM4Rec fold-in |" in printed and "held-out Recall@3" in (out / "results.md").read_text()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cllm4rec").experiment_id])
    assert run.info.run_name.endswith("-cold-start") and run.data.params["k"] == str(K)
    assert run.data.metrics["held-out/fold_in/recall_at_3"] == pytest.approx(report["models"][FOLD_IN]["held-out recall@3"])


def test_cold_start_scores_are_the_models_own_logits(root: Path, evaluated: dict) -> None:
    """The fold-in row ranks with exactly the logits `cllm4rec evaluate` and serving compute."""
    from trainer.cold_start_scoring import user_states
    from trainer.evaluate import scoring_prompt
    from trainer.serving import load_saved

    config, parts, engine = load_saved(evaluated["out"] / "model")
    users = np.array([0, 5, 9])
    states = user_states(engine, parts, users, prompt=scoring_prompt(config), seed=config.seed, batch_size=2,
                         progress=False)
    scorer = model_scorers(states, users, parts.model.collab_item, 30, 1.0, 0)[FOLD_IN]
    logits = engine.item_logits(parts.corpora.scoring_batch(users, scoring_prompt(config), config.seed)).float()
    assert torch.allclose(scorer(users), logits, atol=1e-5)


def test_evaluate_cold_start_refuses_a_folder_it_did_not_write(root: Path, evaluated: dict, tmp_path: Path,
                                                               capsys) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    code = cli.main(["evaluate", "--model", str(root / "run" / "model"), "--cold-start", "--out", str(tmp_path)])
    assert code == 2 and "not empty and not a cold-start evaluation" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
