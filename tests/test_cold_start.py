"""Cold-start evaluation: the hold-out splits (`prepare cold-start`), the metrics of the rankings, each
baseline on a planted case, and `evaluate --cold-start` end to end.

The module shares, per kind, one split of the planted dataset (a quarter of its 40 items, or of its 80
users, held out), one smallest-schedule run on it (tiny LLaMA) and one evaluation of that run, k = 3.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import FOLD_IN_SMALL, planted_raw, tiny_overrides
from cllm4rec.baselines.content import (authored_vectors, mean_word_vectors, profile_scores, random_scores,
                                        tfidf_vectors)
from cllm4rec.interactions import UserItems
from data_prep.cold_start import HISTORY, TEXTS, read_heldout, write_cold_start
from data_prep.errors import DataPrepError
from data_prep.prepare import prepare
from data_prep.processed import load_processed
from trainer import cli
from trainer.cold_start_scoring import (FOLD_IN, MOSTPOP, RANDOM, RANDOM_COLLAB, ROW_KEYS, TFIDF, TFIDF_REVIEWS,
                                        cold_start_metrics,
                                        logit_scorer, replaced_rows)
from trainer.config_loading import load_config
from trainer.fold_in import FoldInOptions
from trainer.pipeline import train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FRACTION, SEED, K = 0.25, 1, 3


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's matrices are too small for two threads to help, and on a loaded machine each waits
    for the other (docs/fold_in.md, section 4): one thread for this module, the setting restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The planted dataset and its two cold-start splits, `cold-items` and `cold-users`, made by the CLI."""
    root = tmp_path_factory.mktemp("cold-start")
    prepare(planted_raw(), root / "data", seed=0)
    for kind in ("items", "users"):
        assert cli.main(["prepare", "cold-start", str(root / "data"), "--kind", kind, "--fraction", str(FRACTION),
                         "--seed", str(SEED), "--out", str(root / f"cold-{kind}")]) == 0
    return root


def train_and_evaluate(root: Path, backbone: Path, kind: str, *flags: str) -> dict:
    """One run on the split of `kind` and its `evaluate --cold-start` (MLflow's default store: beside the run)."""
    train(load_config(None, tiny_overrides(root / f"cold-{kind}", backbone, root / kind / "run", **FOLD_IN_SMALL)),
          progress=False)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        code = cli.main(["evaluate", "--model", str(root / kind / "run" / "model"), "--cold-start", "--k", str(K),
                         "--passes", "2", "--no-progress", *flags])
    out = root / kind / "run" / "cold-start"
    return {"code": code, "out": out, "stdout": printed.getvalue(), "model": root / kind / "run" / "model",
            "report": json.loads((out / "results.json").read_text()) if code == 0 else None}


@pytest.fixture(scope="module")
def items_evaluated(root: Path, tiny_llama) -> dict:
    return train_and_evaluate(root, tiny_llama, "items")


@pytest.fixture(scope="module")
def users_evaluated(root: Path, tiny_llama) -> dict:
    return train_and_evaluate(root, tiny_llama, "users", "--no-mlflow")


def pairs(users, items) -> set[tuple[str, str]]:
    return set(zip(users, items))


# ---- the split ------------------------------------------------------------------------------------

def raw_pairs(ds) -> set[tuple[str, str]]:
    """Every interaction of a processed dataset as (raw user, raw item)."""
    return pairs([ds.user_raw[u] for u in ds.inter_user], [ds.item_raw[j] for j in ds.inter_item])


def test_item_split_removes_every_interaction_of_the_heldout_items(root: Path) -> None:
    split = root / "cold-items"
    source, variant, held = load_processed(root / "data"), load_processed(split), read_heldout(split)
    assert held.kind == "items" and len(held.texts) == 10 and not set(held.texts) & set(variant.item_raw)
    assert all(held.texts[raw] == source.item_text[source.item_raw.index(raw)] for raw in held.texts)
    everything, kept, aside = raw_pairs(source), raw_pairs(variant), pairs(held.users, held.items)
    assert aside == {(u, j) for u, j in everything if j in held.texts}  # every interaction of a held-out item
    dropped = set(source.user_raw) - set(variant.user_raw)  # left with fewer than 3 interactions
    assert kept == {(u, j) for u, j in everything - aside if u not in dropped}
    info = held.info
    assert (info["seed"], info["fraction"], info["heldout"], info["heldout_interactions"]) == (
        SEED, FRACTION, 10, len(aside))
    assert info["users_dropped"] == len(dropped) and variant.seed == source.seed
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # written by rename, no leftovers


def test_user_split_keeps_their_first_interactions_to_fold_in_and_the_rest_to_find(root: Path) -> None:
    split = root / "cold-users"
    source, variant, held = load_processed(root / "data"), load_processed(split), read_heldout(split)
    assert held.kind == "users" and len(held.texts) == 20 and not set(held.texts) & set(variant.user_raw)
    assert all(held.texts[raw] == source.user_text[source.user_raw.index(raw)] for raw in held.texts)
    everything, kept = raw_pairs(source), raw_pairs(variant)
    assert kept == {(u, j) for u, j in everything if u not in held.texts}  # no user dropped, no item lost here
    history = pq.read_table(split / HISTORY).to_pylist()
    for user in held.texts:
        first = [(r["timestamp"], r["item"]) for r in history if r["user"] == user]
        rows = sorted((t, source.item_raw[j]) for u, j, t in zip(source.inter_user, source.inter_item,
                                                                   source.inter_time) if source.user_raw[u] == user)
        assert 1 <= len(first) <= 3 and first == rows[: len(first)]  # the earliest ones
        assert {j for u, j in zip(held.users, held.items) if u == user} == {j for _, j in rows[len(first):]}
    assert held.info["history_interactions"] == len(history) and held.info["interactions_unknown_item"] == 0
    reviews = {(source.user_raw[u], source.item_raw[j]): t
               for u, j, t in zip(source.review_user, source.review_item, source.review_text)}
    assert held.history_reviews and all(r["review"] == reviews.get((r["user"], r["item"]), "") for r in history)
    assert any(r["review"] for r in history) and not read_heldout(root / "cold-items").history_reviews


@pytest.mark.parametrize("kind", ["items", "users"])
def test_split_is_seeded(root: Path, tmp_path: Path, kind: str) -> None:
    write_cold_start(root / "data", tmp_path / "again", kind=kind, fraction=FRACTION, seed=SEED)
    for path in (root / f"cold-{kind}").rglob("*"):
        if path.is_file():
            name = path.relative_to(root / f"cold-{kind}")
            assert (tmp_path / "again" / name).read_bytes() == path.read_bytes(), name
    write_cold_start(root / "data", tmp_path / "other", kind=kind, fraction=FRACTION, seed=SEED + 1)
    assert set(read_heldout(tmp_path / "other").texts) != set(read_heldout(root / f"cold-{kind}").texts)


def test_split_errors_name_the_file_or_option(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataPrepError, match=r"--fraction must lie in \(0, 1\), got 1.5"):
        write_cold_start(root / "data", tmp_path / "x", fraction=1.5)
    with pytest.raises(DataPrepError, match=r"--kind must be one of items, users, got 'reviews'"):
        write_cold_start(root / "data", tmp_path / "x", kind="reviews")
    with pytest.raises(DataPrepError, match=r"data/meta.json: no field 'cold_start': .* is not a cold-start split"):
        read_heldout(root / "data")
    shutil.copytree(root / "cold-items", tmp_path / "changed")
    (tmp_path / "changed" / TEXTS["items"]).write_bytes(b"not parquet")
    with pytest.raises(DataPrepError, match=r"changed/heldout/items.parquet: sha256 differs from meta.json"):
        read_heldout(tmp_path / "changed")
    assert not (tmp_path / "x").exists()


# ---- metrics and scorers --------------------------------------------------------------------------

def test_metrics_equal_hand_computed_values() -> None:
    """Items 0, 1 old and 2..5 held out. User 0: trained on 0, targets {3, 5}; user 1: targets {4}."""
    train = UserItems.from_lists([[0], []], 6)
    targets = UserItems.from_lists([[3, 5], [4]], 6)
    scores = torch.tensor([9.0, 8.0, 4.0, 3.0, 1.0, 2.0])
    def score(rows: np.ndarray) -> torch.Tensor:
        return scores.repeat(len(rows), 1)

    metrics = cold_start_metrics(score, train, targets, n_old_items=2, k=2, batch_size=1)
    # held-out ranking 2, 3, 5, 4: user 0 hits at rank 2 of 2 targets, user 1 misses
    ndcg_user0 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert metrics["held-out recall@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert metrics["held-out ndcg@2"] == pytest.approx((ndcg_user0 + 0) / 2)
    # whole catalogue: user 0 gets 1, 2 (0 is a training item), user 1 gets 0, 1: no hit
    assert metrics["catalogue recall@2"] == 0 and metrics["catalogue ndcg@2"] == 0
    three = cold_start_metrics(score, train, targets, n_old_items=2, k=3, batch_size=2)
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


def test_own_reviews_join_the_tfidf_profile() -> None:
    """A user whose one history item says little but whose review names what they like: the review's words,
    under the item texts' vocabulary and idf, pull the item that matches them to the top."""
    texts = ["red apple fruit", "blue ocean water", "green apple pie", "deep ocean fish"]
    history = UserItems.from_lists([[0], [0]], len(texts))
    reviews = tfidf_vectors(texts, ["I want ocean fish, not this", "unknown words only"])
    assert reviews.shape == (2, tfidf_vectors(texts).shape[1]) and reviews[1].nnz == 0
    authored = authored_vectors(reviews, np.array([0, 0]), 2)  # user 0 wrote both; user 1 none
    assert np.allclose(authored.toarray()[1], 0) and np.allclose(authored.toarray()[0], reviews.toarray().sum(0))
    with_reviews = profile_scores(tfidf_vectors(texts), history, np.array([0, 1]), authored)
    without = profile_scores(tfidf_vectors(texts), history, np.array([0, 1]))
    assert int(with_reviews[0, 1:].argmax()) + 1 == 3 and int(without[0, 1:].argmax()) + 1 == 2
    assert torch.equal(with_reviews[1], without[1])  # no review: the history profile alone
    profile = tfidf_vectors(texts)[0] + reviews[0]
    expected = (tfidf_vectors(texts) @ profile.T).toarray().ravel() / np.linalg.norm(profile.toarray())
    assert np.allclose(with_reviews[0].numpy(), expected, atol=1e-6)


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


def test_random_rows_replace_only_the_new_rows_and_only_inside_the_block() -> None:
    generator = torch.Generator().manual_seed(0)
    states, table = torch.randn(3, 8, generator=generator), torch.nn.Parameter(torch.randn(10, 8, generator=generator))
    before, drawn, users = table.detach().clone(), torch.randn(4, 8, generator=generator), np.array([4, 1, 7])
    folded = logit_scorer(states, users, table)
    with replaced_rows(table, 6, drawn):
        assert torch.equal(table[6:], drawn) and torch.equal(table[:6], before[:6])
        random = logit_scorer(states, users, table)
    assert torch.equal(table, before)  # restored
    rows = np.array([7, 4])
    assert torch.allclose(folded(rows), states[[2, 0]] @ before.T)
    assert torch.allclose(random(rows), states[[2, 0]] @ torch.cat([before[:6], drawn]).T)  # kept its own copy


# ---- end to end -----------------------------------------------------------------------------------

def test_evaluate_cold_start_items_writes_the_table_and_logs_it(root: Path, items_evaluated: dict) -> None:
    import mlflow

    assert items_evaluated["code"] == 0
    out, report, printed = items_evaluated["out"], items_evaluated["report"], items_evaluated["stdout"]
    columns = [f"{s} {m}@{K}" for s in ("held-out", "catalogue") for m in ("recall", "ndcg")]
    rows = [row for row in ROW_KEYS if row not in (MOSTPOP, TFIDF_REVIEWS)]  # new items: no interactions, no reviews
    assert report["columns"] == columns and report["rows"] == rows and set(report["models"]) == set(rows)
    assert all(0 <= report["models"][row][c] <= 1 for row in rows for c in columns)
    assert report["heldout"] == {"kind": "items", "model": 30, "new": 10} and report["users_evaluated"] > 40
    assert report["cold_start"]["seed"] == SEED and (out / "model" / "COMPLETE").is_file()
    # planted: item texts name their cluster, and so do a user's history items
    assert report["models"][TFIDF]["held-out recall@3"] > report["models"][RANDOM]["held-out recall@3"] + 0.2
    assert "| CLLM4Rec fold-in |" in printed and "held-out Recall@3" in (out / "results.md").read_text()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'items' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cllm4rec").experiment_id])
    assert run.info.run_name.endswith("-cold-start") and run.data.params["k"] == str(K)
    logged = run.data.metrics["held-out/fold_in/recall_at_3"]
    assert logged == pytest.approx(report["models"][FOLD_IN]["held-out recall@3"])


def test_evaluate_cold_start_users_ranks_the_catalogue_for_the_new_users(root: Path, users_evaluated: dict) -> None:
    assert users_evaluated["code"] == 0
    report, held = users_evaluated["report"], read_heldout(root / "cold-users")
    assert report["columns"] == [f"catalogue recall@{K}", f"catalogue ndcg@{K}"] and report["rows"] == list(ROW_KEYS)
    assert report["heldout"] == {"kind": "users", "model": 60, "new": 20}
    assert report["users_evaluated"] == len(set(held.users)) and report["targets"] == len(held.users)
    assert report["fold_in"]["content_loss"] and not (root / "users" / "mlflow.db").exists()  # --no-mlflow
    history = pq.read_table(root / "cold-users" / HISTORY)
    assert report["options"]["reviews"] and report["fold_in"]["reviews"] == sum(map(bool, history["review"].to_pylist()))
    assert report["fold_in"]["reviews"] > 0
    assert report["options"]["align_users"] == "none" and report["fold_in"]["user_alignment"] == {"method": "none",
                                                                                                 "users": 0}
    random, folded = (report["models"][row]["catalogue recall@3"] for row in (RANDOM_COLLAB, FOLD_IN))
    assert random != folded  # the new users' collaborative rows enter their prompts


def test_no_reviews_folds_the_new_users_in_without_them(root: Path, users_evaluated: dict, tmp_path: Path) -> None:
    from trainer.cold_start import fold_heldout

    _, folded = fold_heldout(users_evaluated["model"], tmp_path / "model", FoldInOptions(passes=0, history_passes=0,
                                                                                     progress=False), reviews=False)
    assert folded.added["reviews"] == 0 and folded.added["users"] == 20
    args = cli.build_parser().parse_args(["evaluate", "--model", "m", "--cold-start", "--no-reviews"])
    assert args.no_reviews


def test_fold_in_reads_a_review_table_with_its_columns(tmp_path: Path) -> None:
    from trainer.cli_model import _fold_in_tables

    args = cli.build_parser().parse_args(["fold-in", "--model", "m", "--out", "o", "--interactions", "i.csv",
                                          "--user-col", "member", "--reviews", "r.csv", "--review-text-col", "body"])
    spec = _fold_in_tables(args)["reviews"]
    assert (spec.path, spec.user, spec.item, spec.text) == (Path("r.csv"), "member", "item", "body")


@pytest.mark.parametrize("command", ["evaluate", "fold-in"])
def test_align_users_flag_reaches_the_fold_in_options(command: str) -> None:
    from trainer.cli_cold_start import fold_in_options

    argv = [command, "--model", "m", "--align-users", "moments", "--align-features", "words",
            *(["--out", "o"] if command == "fold-in" else [])]
    assert fold_in_options(cli.build_parser().parse_args(argv)).align_users == "moments"


@pytest.mark.parametrize("kind", ["items", "users"])
def test_cold_start_scores_are_the_models_own_logits(root: Path, items_evaluated: dict, users_evaluated: dict,
                                                     kind: str) -> None:
    """The fold-in row ranks with exactly the logits `cllm4rec evaluate` and serving compute."""
    from trainer.evaluate import scoring_prompt
    from trainer.serving import load_saved, user_states

    config, parts, engine = load_saved((items_evaluated if kind == "items" else users_evaluated)["out"] / "model")
    users = np.array([0, 5, parts.dataset.n_users - 1])
    states = user_states(engine, parts.corpora, users, prompt=scoring_prompt(config), seed=config.seed, batch_size=2,
                         progress=False)
    logits = engine.item_logits(parts.corpora.scoring_batch(users, scoring_prompt(config), config.seed)).float()
    assert torch.allclose(logit_scorer(states, users, parts.model.collab_item)(users), logits, atol=1e-5)


def test_evaluate_cold_start_refuses_a_folder_it_did_not_write(items_evaluated: dict, tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    code = cli.main(["evaluate", "--model", str(items_evaluated["model"]), "--cold-start", "--out", str(tmp_path)])
    assert code == 2 and "not empty and not a cold-start evaluation" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
