"""Tests for trainer.tracking: parent/phase runs, metrics, queued per-step metrics, params, artifacts,
disabled mode."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from trainer.tracking import (
    MAX_PARAM_VALUE_CHARS,
    TRUNCATION_MARKER,
    Tracker,
    mlflow_params,
    safe_key,
)

mlflow = pytest.importorskip("mlflow")

EXPERIMENT = "test-tracking"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store for the module (migrations run once); returns the db path."""
    db = tmp_path_factory.mktemp("mlflow") / "store" / "mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        Tracker(True, None, EXPERIMENT, default_store=db)  # creates the db and the experiment
    return db


@pytest.fixture
def tracker(store: Path, monkeypatch: pytest.MonkeyPatch) -> Tracker:
    """An enabled tracker on the shared store, independent of the caller's environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Tracker(True, None, EXPERIMENT, default_store=store)


def _client(store: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")


def _children(client: mlflow.MlflowClient, experiment_id: str, parent: str) -> dict[str, object]:
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    return {run.data.tags["phase"]: run for run in runs}


def test_mlflow_params_dotted_safe_and_truncated() -> None:
    flat = mlflow_params({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None, "tags": {}, "recall@20": {"k": 1},
                          "long": "x" * 7000, "fits": "y" * MAX_PARAM_VALUE_CHARS})
    assert flat == {"a.b": "1", "a.c.d": "[1, 2]", "e": "None", "tags": "{}", "recall_at_20.k": "1",
                    "long": "x" * (MAX_PARAM_VALUE_CHARS - len(TRUNCATION_MARKER)) + TRUNCATION_MARKER,
                    "fits": "y" * MAX_PARAM_VALUE_CHARS}


def test_parent_and_phases(tracker: Tracker, store: Path) -> None:
    global_uri = mlflow.get_tracking_uri()
    params = {"model": {"backbone": "gpt2", "lr": 1e-3}, "seed": 7}
    params.update({f"many.p{i}": i for i in range(150)})  # > one log_batch of params
    with tracker:
        parent = tracker.start("train", params, tags={"recipe": "quick"})
        assert tracker.run_id == parent
        with tracker.phase("pretrain", params={"rounds": 2}) as pretrain_id:
            for step in range(3):
                tracker.log_metrics({"lm_loss": 1.0 / (step + 1), "mr_loss": step}, step=step)
            tracker.log_metrics({"lr": 0.5}, step=0, parent=True)
        with tracker.phase("finetune") as finetune_id:
            tracker.log_metrics({"recall@20": 0.25}, step=1)  # stored as recall_at_20
            tracker.log_dict({"n": 1}, "phase.json", phase_run=True)
        tracker.log_metrics({"final": 1.0})  # no active phase: goes to the parent

    assert mlflow.get_tracking_uri() == global_uri  # no global MLflow state touched
    client = _client(store)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["recipe"] == "quick"
    assert run.data.params["model.backbone"] == "gpt2" and run.data.params["seed"] == "7"
    assert run.data.params["many.p149"] == "149"
    assert run.data.metrics == {"lr": 0.5, "final": 1.0}

    children = _children(client, tracker.experiment_id, parent)
    assert set(children) == {"pretrain", "finetune"}
    assert children["pretrain"].info.run_id == pretrain_id
    assert children["finetune"].info.run_id == finetune_id
    assert all(child.info.status == "FINISHED" for child in children.values())
    assert children["pretrain"].data.params == {"rounds": "2"}
    history = client.get_metric_history(pretrain_id, "lm_loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    assert [m.value for m in client.get_metric_history(pretrain_id, "mr_loss")] == [0, 1, 2]
    assert client.get_metric_history(finetune_id, "recall_at_20")[0].step == 1
    assert client.get_metric_history(finetune_id, "lm_loss") == []
    assert [a.path for a in client.list_artifacts(finetune_id)] == ["phase.json"]


def test_step_metrics_are_queued_and_written_per_phase(tracker: Tracker, store: Path) -> None:
    with tracker:
        tracker.start("steps", {})
        with tracker.phase("L-step") as lstep_id:
            for step in range(1, 4):
                tracker.log_step_metrics({"step_collab_lm_loss": 4.0 - step, "bad": float("nan")}, step=step)
            assert _client(store).get_metric_history(lstep_id, "step_collab_lm_loss") == []  # still queued
        assert [(m.step, m.value) for m in _client(store).get_metric_history(lstep_id, "step_collab_lm_loss")] == [
            (1, 3.0), (2, 2.0), (3, 1.0)]  # written when the phase ended
        with tracker.phase("finetune") as finetune_id:
            tracker.log_step_metrics({"step_rec_loss": 5.0}, step=1)
        tracker.log_step_metrics({"step_after": 1.0}, step=7)  # no phase: the parent, written at its end
    client = _client(store)
    assert [m.value for m in client.get_metric_history(finetune_id, "step_rec_loss")] == [5.0]
    assert client.get_metric_history(lstep_id, "bad") == []
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "step_after")] == [(7, 1.0)]


def test_failed_phase_parent_continues(tracker: Tracker, store: Path) -> None:
    parent = tracker.start("fails", {})
    with pytest.raises(ValueError, match="boom"):
        with tracker.phase("bad"):
            raise ValueError("boom")
    with tracker.phase("good"):
        tracker.log_metrics({"x": 1.0})
    tracker.end()

    client = _client(store)
    children = _children(client, tracker.experiment_id, parent)
    assert children["bad"].info.status == "FAILED"
    assert children["good"].info.status == "FINISHED"
    assert client.get_run(parent).info.status == "FINISHED"


def test_context_manager_marks_parent_failed(tracker: Tracker, store: Path) -> None:
    with pytest.raises(RuntimeError):
        with tracker as t:
            t.start("crash", {})
            raise RuntimeError("crash")
    assert _client(store).get_run(tracker.run_id).info.status == "FAILED"


def test_non_finite_metrics_skipped(
    tracker: Tracker, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tracker:
        parent = tracker.start("nan", {})
        with caplog.at_level(logging.WARNING, logger="trainer.tracking"):
            tracker.log_metrics({"ok": 2.0, "nan": float("nan"), "inf": float("inf")}, step=0)
    assert _client(store).get_run(parent).data.metrics == {"ok": 2.0}
    assert "nan" in caplog.text and "inf" in caplog.text


def test_artifacts_roundtrip(tracker: Tracker, store: Path, tmp_path: Path) -> None:
    config = {"lambda_c": 0.1, "layers": [1, 2], "name": "quick"}
    table = tmp_path / "results.md"
    table.write_text("| CLLM4Rec | 0.1 |\n")
    with tracker:
        parent = tracker.start("artifacts", config)
        tracker.log_dict(config, "config.json")
        tracker.log_dict(config, "config.yaml")
        tracker.log_text("hello", "notes/summary.txt")
        tracker.log_artifact(table, artifact_path="tables")

    location = _client(store).get_experiment(tracker.experiment_id).artifact_location
    assert location == (store.parent / "mlartifacts" / EXPERIMENT).as_uri()
    downloaded = mlflow.artifacts.download_artifacts(
        run_id=parent, dst_path=str(tmp_path / "dl"), tracking_uri=f"sqlite:///{store}"
    )
    out = Path(downloaded)
    assert json.loads((out / "config.json").read_text()) == config
    assert (out / "config.yaml").read_text().startswith("lambda_c: 0.1")
    assert (out / "notes" / "summary.txt").read_text() == "hello"
    assert (out / "tables" / "results.md").read_text() == table.read_text()


def test_env_tracking_uri_respected(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    unused = tmp_path / "unused" / "mlflow.db"
    tracker = Tracker(True, None, EXPERIMENT, default_store=unused)
    assert tracker.tracking_uri == f"sqlite:///{store}"
    with tracker:
        parent = tracker.start("from-env", {})
    assert _client(store).get_run(parent).info.run_name == "from-env"
    assert not unused.parent.exists()


def test_explicit_uri_beats_env(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////nonexistent/elsewhere.db")
    tracker = Tracker(True, f"sqlite:///{store}", EXPERIMENT, default_store=Path("/nonexistent"))
    assert tracker.tracking_uri == f"sqlite:///{store}"


def test_disabled_is_noop_without_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # any `import mlflow` would now fail
    store = tmp_path / "off" / "mlflow.db"
    artifact = tmp_path / "a.txt"
    artifact.write_text("a")
    with Tracker(False, None, EXPERIMENT, default_store=store) as tracker:
        assert tracker.start("off", {"a": 1}) is None
        with tracker.phase("p", {"b": 2}) as phase_id:
            assert phase_id is None
            tracker.log_metrics({"x": 1.0}, step=0)
        tracker.log_artifact(artifact)
        tracker.log_dict({"a": 1}, "a.json")
        tracker.log_text("t", "t.txt")
    assert tracker.run_id is None and tracker.experiment_id is None
    assert not store.parent.exists()


def test_safe_key() -> None:
    assert safe_key("recall@20") == "recall_at_20"
    assert safe_key("loss/lm C-step.round 1: x") == "loss/lm C-step.round 1: x"
    assert safe_key("ndcg(100)") == "ndcg_100_"
    assert safe_key("λ_c*") == "λ_c_"


def test_experiment_created_concurrently_is_joined(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs starting at once on one store: the one whose create loses the race joins the winner's."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    name = "created-by-another-run"
    winner = _client(store).create_experiment(name)
    looked_up: list[str] = []
    real_lookup = mlflow.MlflowClient.get_experiment_by_name

    def stale_first_lookup(self: mlflow.MlflowClient, experiment: str) -> object:
        looked_up.append(experiment)
        # The first lookup happened before the other run created the experiment.
        return None if len(looked_up) == 1 else real_lookup(self, experiment)

    monkeypatch.setattr(mlflow.MlflowClient, "get_experiment_by_name", stale_first_lookup)
    tracker = Tracker(True, None, name, default_store=store)
    assert tracker.experiment_id == winner
    assert looked_up == [name, name]
