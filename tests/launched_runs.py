"""Training runs started as users start them, for the multi-rank tests: one rank in a plain process, R
CPU ranks under the DeepSpeed launcher (scripts/deepspeed_single_node.sh), one OpenMP thread each (no
oversubscription on 2 cores, deterministic reductions); and how two finished runs are compared."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")
LOSS_KEYS = ("lm_loss", "mr_loss", "val_selection")
METRICS = ("recall@20", "recall@40", "ndcg@100")


def launch_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               PYTHON=sys.executable, MASTER_PORT=str(29500 + os.getpid() % 1000))
    return env


def command(args: list[str], ranks: int) -> list[str]:
    if ranks == 1:  # a plain process, no launcher
        return [sys.executable, "-m", "trainer", "--no-progress", *args]
    return ["bash", str(REPO / "scripts" / "deepspeed_single_node.sh"), str(ranks), "--no-progress", *args]


def run_training(args: list[str], ranks: int, log: Path, timeout: float = 300) -> None:
    with log.open("w") as sink:
        proc = subprocess.run(command(args, ranks), cwd=REPO, env=launch_env(), stdout=sink, stderr=subprocess.STDOUT,
                              timeout=timeout)
    assert proc.returncode == 0, log.read_text()[-4000:]


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def final_tables(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "tables.safetensors"))


def assert_same_history(a: dict, b: dict, rel: float) -> None:
    assert [h["unit"] for h in a["history"]] == [h["unit"] for h in b["history"]]
    for ha, hb in zip(a["history"], b["history"]):
        for key in ha:
            if key.endswith(LOSS_KEYS) or key.endswith("_tokens"):
                assert hb[key] == pytest.approx(ha[key], rel=rel, abs=1e-7), (ha["unit"], key)


def assert_same_run(reference: Path, other: Path) -> None:
    """The same per-epoch losses (1e-5 relative: sums are reduced in another order over other ranks),
    final metrics (1e-6) and tables (1e-4 relative, 1e-6 absolute)."""
    want, got = results(reference), results(other)
    assert_same_history(want, got, rel=1e-5)
    for key in METRICS:
        assert got["models"]["CLLM4Rec"][key] == pytest.approx(want["models"]["CLLM4Rec"][key], abs=1e-6), key
    t1, t2 = final_tables(reference), final_tables(other)
    for name in t1:
        torch.testing.assert_close(t2[name], t1[name], rtol=1e-4, atol=1e-6)
