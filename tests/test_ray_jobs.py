"""Ray Train on a local loopback cluster: `ray job submit` of ray_jobs/train.py with 2 CPU workers
(DeepSpeed ZeRO-3 over gloo), one worker SIGKILLed mid-epoch: the worker group restarts, resumes from
the last checkpoint and the job succeeds; the MLflow store holds the run; ray_jobs/evaluate.py
reproduces its test metrics. With the row-sharded tables (`distributed.table_sharding=rows`) the job
survives a killed worker the same way and trains as one row-sharded rank does."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_overrides
from launched_runs import ROWS, SCHEDULE, assert_same_run, results

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
SETTINGS = {**SCHEDULE, "tracking.mlflow": True}


def _workers(session: int) -> list[int]:
    """PIDs of the Ray Train workers of the cluster this test session started (its process session)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True, check=True).stdout
    return [int(pid) for pid, sid, *args in (line.split(None, 2) for line in out.splitlines())
            if int(sid) == session and args and args[0].startswith("ray::RayTrainWorker")]


def _train_job(address: str, storage: Path, name: str, overrides: list[str]) -> list[str]:
    """`ray job submit` of ray_jobs/train.py: 2 CPU workers, one restart, the run `name` in `storage`/runs."""
    return [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--", "python", "ray_jobs/train.py",
            "--workers", "2", "--cpus-per-worker", "1", "--max-failures", "1", "--storage", str(storage), f"name={name}",
            *overrides]


def _run_killing_a_worker(command: list[str], run: Path, session: int, log: Path) -> None:
    """Run the job `command`; once the run's latest checkpoint is inside its first L-step, SIGKILL one of the
    2 workers; the job must succeed (the worker group restarted and resumed)."""
    latest = run / "checkpoints" / "latest"
    with log.open("w") as sink:
        job = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while "lstep" not in (latest.read_text() if latest.is_file() else ""):
                assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            victims = _workers(session)
            assert len(victims) == 2, victims
            os.kill(victims[-1], signal.SIGKILL)
            assert job.wait(timeout=600) == 0, log.read_text()[-3000:]
        finally:
            if job.poll() is None:
                job.kill()
    text = log.read_text()
    assert "succeeded" in text and "resumed from" in text


def test_ray_train_job_survives_a_killed_worker(ray_cluster, planted_dataset, tiny_llama, tmp_path) -> None:
    address, session = ray_cluster.address, ray_cluster.session
    storage = tmp_path / "storage"
    overrides = [o for o in tiny_overrides(planted_dataset, tiny_llama, storage, **SETTINGS) if not o.startswith("output_dir=")]
    _run_killing_a_worker(_train_job(address, storage, "ray-tiny", overrides), storage / "runs" / "ray-tiny", session,
                          tmp_path / "job.log")
    results = json.loads((storage / "runs" / "ray-tiny" / "results.json").read_text())
    assert results["engine"] == "deepspeed-zero3 x2"
    assert [h["unit"] for h in results["history"]][-1] == "finetune-r000-e001"

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'runs' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "cllm4rec"]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.info.run_name == "ray-tiny"]
    assert parents and any(r.data.tags.get("mlflow.parentRunId") == parents[-1].info.run_id for r in runs)

    out = tmp_path / "eval.json"
    evaluate = subprocess.run([RAY, "job", "submit", "--address", address,
                               "--working-dir", str(REPO), "--", "python", "ray_jobs/evaluate.py", "--model",
                               str(storage / "runs" / "ray-tiny" / "model"), "--out", str(out)],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
    assert evaluate.returncode == 0, evaluate.stdout[-3000:] + evaluate.stderr[-3000:]
    metrics = json.loads(out.read_text())
    for key in ("recall@20", "recall@40", "ndcg@100"):
        assert metrics[key] == pytest.approx(results["models"]["CLLM4Rec"][key], abs=1e-6)


def test_ray_train_job_with_row_sharded_tables_restarts_and_equals_one_rank(ray_cluster, planted_dataset, tiny_llama,
                                                                           shared_runs, tmp_path) -> None:
    """`distributed.table_sharding=rows` under Ray Train, one worker SIGKILLed in the first L-step: the worker
    group restarts, each worker reads its half of the rows back from the checkpoint's per-rank files, and
    the job ends as one row-sharded rank in a plain process does (conftest.py's `shared_runs`; the
    cross-rank tolerance of the launcher tests)."""
    ray_out, one = tmp_path / "storage" / "runs" / "ray-rows", shared_runs.row_sharded
    command = _train_job(ray_cluster.address, tmp_path / "storage", "ray-rows",
                         tiny_overrides(planted_dataset, tiny_llama, ray_out, **SCHEDULE, **ROWS))
    _run_killing_a_worker(command, ray_out, ray_cluster.session, tmp_path / "job.log")
    assert results(ray_out)["engine"] == results(one)["engine"] == "row-sharded"
    (whole,) = [r["trainable_elements_on_rank"] for r in results(one)["ranks"]]
    assert [r["trainable_elements_on_rank"] for r in results(ray_out)["ranks"]] == [whole // 2] * 2
    assert_same_run(one, ray_out)
