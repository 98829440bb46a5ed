"""The saved model of the shared trained run (conftest's `trained`): it reloads and recommends
identically, `evaluate_saved` and `cllm4rec diagnose` reproduce what training measured, the MLflow
pyfunc model and the REST server answer, and the embeddings feed downstream models."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import METRICS, N_ITEMS, N_USERS, Trained, stop_process_group
from cllm4rec.diagnostics import hidden_user_variance, logit_user_share, mean_pairwise_cosine
from cllm4rec.metrics import evaluate_scores
from data_prep.errors import DataPrepError
from trainer import cli
from trainer.evaluate import evaluate, recommend
from trainer.serving import evaluate_saved, last_hidden_and_logits, recommend_saved


# ---- the saved model reloads and recommends identically ---------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_saved_model_recommends_identically(trained: Trained) -> None:
    run, model_dir = trained.run, trained.out / "model"
    first = recommend_saved(model_dir, None, 5)
    second = recommend_saved(model_dir, None, 5)
    assert first.equals(second)
    assert first.num_rows == N_USERS * 5
    dataset = run.parts.dataset
    user_index = {raw: i for i, raw in enumerate(dataset.user_raw)}
    item_index = {raw: j for j, raw in enumerate(dataset.item_raw)}
    table = first.to_pydict()
    saved_items = np.array([item_index[i] for i in table["item"]]).reshape(N_USERS, 5)
    saved_scores = np.array(table["score"], dtype=np.float32).reshape(N_USERS, 5)
    assert [user_index[u] for u in table["user"]] == list(np.repeat(np.arange(N_USERS), 5))
    assert table["rank"] == [1, 2, 3, 4, 5] * N_USERS
    assert table["item_text"] == [dataset.item_text[j] for j in saved_items.ravel()]
    assert np.all(np.diff(saved_scores, axis=1) <= 0)
    # the trained TrainingRun in memory ranks exactly the same
    items, scores = recommend(run.engine, run.parts.corpora, np.arange(N_USERS), 5, prompt="rec",
                              seed=run.config.seed, batch_size=run.config.eval.batch_size)
    np.testing.assert_array_equal(saved_items, items)
    np.testing.assert_allclose(saved_scores, scores, rtol=1e-6)
    # never a training item
    train_items = run.splits["train"]
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
    after = trained.run.parts.model.backbone.state_dict()
    before = pristine.state_dict()
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"frozen backbone weights changed: {changed}"
    assert not any(p.requires_grad for p in trained.run.parts.model.backbone.parameters())


# ---- evaluate_saved reproduces the test metrics ----------------------------------------------

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
    run = trained.run
    users = np.flatnonzero(run.splits["val"].lengths() > 0)[:30]
    assert cli.main(["diagnose", "--model", str(trained.out / "model"), "--users", "30"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{trained.out / 'model'}: 30 users with val items")
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in printed.splitlines()
            if line.startswith("| ") and not line.startswith("| diagnostic")}
    assert len(rows) == 5

    batch = run.parts.corpora.scoring_batch(users, "rec", run.config.seed)
    hidden, logits = last_hidden_and_logits(run.engine, batch)
    torch.testing.assert_close(logits, run.engine.item_logits(batch).float(), rtol=1e-5, atol=1e-5)
    assert rows["hidden-state user variance share"] == pytest.approx(hidden_user_variance(hidden), abs=1e-4)
    assert rows["mean pairwise cosine of hidden states"] == pytest.approx(mean_pairwise_cosine(hidden), abs=1e-4)
    assert rows["logit user-specific share"] == pytest.approx(logit_user_share(logits), abs=1e-4)
    word_norm = run.parts.model.backbone.get_input_embeddings().weight.float().norm(dim=1).mean()
    for kind in ("user", "item"):
        ratio = getattr(run.parts.model, f"collab_{kind}").float().norm(dim=1).mean() / word_norm
        assert rows[f"{kind} row norm / word norm"] == pytest.approx(float(ratio), abs=1e-4)
    validated = evaluate(run.engine, run.parts.corpora, run.splits["val"], prompt="rec", seed=run.config.seed,
                         batch_size=8, recall_ks=[20], ndcg_ks=[], max_users=int(users[-1]) + 1, logit_share=True)
    assert validated["logit_user_share"] == pytest.approx(logit_user_share(logits), abs=1e-6)  # other batches
    # planted clusters: users differ, so a trained model's scores do too
    assert 0.05 < logit_user_share(logits) <= 1.0 and mean_pairwise_cosine(hidden) < 1.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_diagnose_history_caps_limit_the_prompt_not_the_exclusion(trained: Trained, capsys) -> None:
    """`cllm4rec diagnose --history-caps`: a cap at or above data.max_items reproduces the plain
    validation metrics; a cap of N puts at most N items in each prompt (0: none) while the training
    items stay excluded from the ranking."""
    run, model = trained.run, trained.out / "model"
    corpora, tokenizer = run.parts.corpora, run.parts.corpora.tokenizer
    users = np.flatnonzero(run.splits["val"].lengths() > 0)[:8]
    first_item = tokenizer.item_token(0)
    for cap in (0, 2):
        ids = corpora.scoring_batch(users, "rec", run.config.seed, max_items=cap)["input_ids"]
        per_row = ((ids >= first_item) & (ids < first_item + tokenizer.n_items)).sum(dim=1)
        assert per_row.tolist() == [min(cap, int(run.splits["train"].lengths()[u])) for u in users]

    full = corpora.max_items
    assert cli.main(["diagnose", "--model", str(model), "--users", "30", "--history-caps", "0", str(full)]) == 0
    printed = capsys.readouterr().out
    table = [line.split("|")[1:-1] for line in printed.splitlines() if line.startswith("| ")][-2:]
    plain = evaluate_saved(model, "val")
    columns = run.config.eval.columns()
    assert table[1][0].strip() == str(full)
    assert [float(x) for x in table[1][1:]] == pytest.approx([plain[c] for c in columns], abs=1e-4)
    assert [float(x) for x in table[0][1:]] != pytest.approx([plain[c] for c in columns], abs=1e-4)
    assert cli.main(["diagnose", "--model", str(model), "--history-caps", "-1"]) == 2
    assert "--history-caps: caps must be >= 0, got [-1]" in capsys.readouterr().err


# ---- the MLflow pyfunc model and its REST endpoint --------------------------------------------

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
    # mlflow starts `uvicorn` from PATH, where the interpreter's bin comes first (conftest.py)
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                               str(trained.out / "pyfunc"), "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
                               "-w", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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


# ---- embeddings for downstream models (CLLM4Rec-Emb) -------------------------------------------

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
    dataset = trained.run.parts.dataset
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
    run = trained.run
    train_items, test_items = run.splits["train"], run.splits["test"]
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
