"""Training runs started as users start them, for the multi-rank tests: one rank in a plain process, R
CPU ranks under the DeepSpeed launcher (scripts/deepspeed_single_node.sh), or loopback "nodes" of one
rank each, one launcher per node without ssh (scripts/deepspeed_multi_node.sh --no-ssh); one OpenMP
thread per rank (no oversubscription on 2 cores, deterministic reductions); and how two finished runs
are compared."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import load_model, load_tables
from trainer.distributed import free_port

REPO = Path(__file__).resolve().parent.parent
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")
# The store port of every launched run of this session, picked free once (a port derived from the pid could be
# one that another launcher of the session derived too): shm_buffers() names the runs' buffers by it.
LAUNCH_PORT = free_port()
LOSS_KEYS = ("lm_loss", "mr_loss", "val_selection")
METRICS = ("recall@20", "recall@40", "ndcg@100")
# The schedule of the multi-rank runs (test_distributed.py, test_row_sharding.py, test_ray_jobs.py): every
# kind of epoch unit (a warm-up epoch, 2 rounds of L- and C-steps, 2 finetuning epochs), each epoch cut to
# 6 steps of batch 4 with a mid-epoch checkpoint every 2 steps (two places to kill a run and resume it
# from); no reviews, no Multi-VAE or EASE.
SCHEDULE = {"pretrain.warmup_epochs": 1, "pretrain.rounds": 2, "pretrain.batch_size": 4,
            "pretrain.max_steps_per_epoch": 6, "finetune.epochs": 2, "finetune.batch_size": 4,
            "finetune.max_steps_per_epoch": 6, "data.reviews": False, "baselines.multivae": False,
            "baselines.ease": False, "checkpoint.every_steps": 2}
ROWS = {"distributed.engine": "deepspeed", "distributed.table_sharding": "rows"}  # the row-sharded engine


def launch_env() -> dict[str, str]:
    """This environment (the interpreter's bin already first on PATH: conftest.py) without a launcher's
    variables, with one thread per rank."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               PYTHON=sys.executable, MASTER_PORT=str(LAUNCH_PORT))
    return env


def shm_buffers(ranks: int) -> list[Path]:
    """The DeepSpeed shared-memory buffers that this session's single-node runs of `ranks` ranks create."""
    from trainer.distributed import shm_allreduce_buffer

    env = {**launch_env(), "MASTER_ADDR": "127.0.0.1"}  # the launcher's address on one node
    return [shm_allreduce_buffer(rank, env) for rank in range(ranks)]


def command(args: list[str], ranks: int) -> list[str]:
    if ranks == 1:  # a plain process, no launcher
        return [sys.executable, "-m", "trainer", "--no-progress", *args]
    return ["bash", str(REPO / "scripts" / "deepspeed_single_node.sh"), str(ranks), "--no-progress", *args]


def run_training(args: list[str], ranks: int, log: Path, timeout: float = 300) -> None:
    with log.open("w") as sink:
        proc = subprocess.run(command(args, ranks), cwd=REPO, env=launch_env(), stdout=sink, stderr=subprocess.STDOUT,
                              timeout=timeout)
    assert proc.returncode == 0, log.read_text()[-4000:]


def node_command(args: list[str], hostfile: Path, node_rank: int) -> list[str]:
    """The command a user runs on node `node_rank` of `hostfile` without ssh."""
    return ["bash", str(REPO / "scripts" / "deepspeed_multi_node.sh"), "--no-ssh", "--node-rank", str(node_rank),
            str(hostfile), "--no-progress", *args]


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int | None]:
    """Exit codes once every process has ended, one has failed, or `timeout` seconds have passed (None:
    still running)."""
    deadline = time.monotonic() + timeout
    codes = [p.poll() for p in procs]
    while None in codes and not any(codes) and time.monotonic() < deadline:
        time.sleep(0.2)
        codes = [p.poll() for p in procs]
    return codes


def run_nodes(args: list[str], nodes: int, folder: Path, timeout: float = 300) -> None:
    """Train on `nodes` loopback hosts of one slot each (hostfile `folder`/hosts, MASTER_ADDR 127.0.0.1):
    one launcher per node, each in its own process group, logging to `folder`/node<N>.log. Every group
    still running is killed once one fails or `timeout` seconds have passed."""
    hostfile = folder / "hosts"
    hostfile.write_text("".join(f"node-{n} slots=1\n" for n in range(nodes)), encoding="utf-8")
    env = {**launch_env(), "MASTER_ADDR": "127.0.0.1"}
    procs = []
    try:
        for n in range(nodes):
            with (folder / f"node{n}.log").open("w") as sink:
                procs.append(subprocess.Popen(node_command(args, hostfile, n), cwd=REPO, env=env, stdout=sink,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        codes = _wait_all(procs, timeout)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the node's launcher and its ranks
                proc.wait(timeout=60)
    tails = "\n".join((folder / f"node{n}.log").read_text()[-2000:] for n in range(nodes))
    assert codes == [0] * nodes, f"exit codes {codes}\n{tails}"


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def final_tables(out: Path) -> dict[str, torch.Tensor]:
    return load_tables(out / "model")


def assert_same_history(a: dict, b: dict, rel: float) -> None:
    assert [h["unit"] for h in a["history"]] == [h["unit"] for h in b["history"]]
    for ha, hb in zip(a["history"], b["history"]):
        for key in ha:
            if key.endswith(LOSS_KEYS) or key.endswith("_tokens"):
                assert hb[key] == pytest.approx(ha[key], rel=rel, abs=1e-7), (ha["unit"], key)


def assert_same_run(reference: Path, other: Path) -> None:
    """The same per-epoch losses (1e-5 relative: sums are reduced in another order over other ranks),
    final metrics of every model in the results (1e-6), and tables and trained backbone weights (1e-4
    relative, 1e-6 absolute)."""
    want, got = results(reference), results(other)
    assert_same_history(want, got, rel=1e-5)
    assert got["models"].keys() == want["models"].keys()
    for model, metrics in want["models"].items():
        for key in METRICS:
            assert got["models"][model][key] == pytest.approx(metrics[key], abs=1e-6), (model, key)
    (t1, e1), (t2, e2) = ((final_tables(out), load_model(out / "model", tables=False).extra) for out in (reference, other))
    assert e1.keys() == e2.keys()
    for name, tensor in {**t1, **e1}.items():
        torch.testing.assert_close({**t2, **e2}[name], tensor, rtol=1e-4, atol=1e-6)


@dataclass
class SharedRuns:
    """The 1-rank runs of SCHEDULE on `dataset` with `backbone` that several modules compare against, each
    trained on first use, once per test session (conftest.py's `shared_runs`), in `root`."""

    dataset: Path
    backbone: Path
    root: Path

    def _overrides(self, name: str, engine: dict[str, str]) -> list[str]:
        from conftest import tiny_overrides

        return tiny_overrides(self.dataset, self.backbone, self.root / name, **SCHEDULE, **engine)

    @cached_property
    def plain(self) -> Path:
        """The plain engine, trained in this process (test_distributed.py, test_row_sharding.py)."""
        from trainer.config_loading import load_config
        from trainer.pipeline import train

        train(load_config("quick", self._overrides("plain", {"distributed.engine": "plain"})), progress=False)
        return self.root / "plain"

    @cached_property
    def row_sharded(self) -> Path:
        """One row-sharded rank in a plain process, `python -m trainer` (test_row_sharding.py,
        test_ray_jobs.py)."""
        run_training(self._overrides("rows1", ROWS), 1, self.root / "rows1.log")
        return self.root / "rows1"
