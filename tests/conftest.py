"""Shared, expensive fixtures: tiny random backbones (LLaMA and GPT-2), a planted dataset, one trained run, the
multi-rank tests' 1-rank runs, a loopback Ray cluster."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The interpreter's bin first on PATH, for this process and every process it starts (launched and spawned
# ranks, the benchmarks' launchers, Ray workers): DeepSpeed JIT-builds its CPU comm op with the first `ninja`
# found, and a ninja of another version than the last build's rebuilds it (~65 CPU seconds each time the
# ninja changes) — this process builds it too (test_distributed.py's group of one).
BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != BIN:
    os.environ["PATH"] = os.pathsep.join([BIN, os.environ.get("PATH", "")])

from tokenizer_fixtures import build_tokenizer  # noqa: E402

# Words the tiny tokenizers know (see tokenizer_fixtures.CORPUS), used for planted texts.
CLUSTER_WORDS = ["comedy about cats", "movie loved stars", "old films teacher", "dogs released items"]


def _save_tiny_backbone(folder: Path, arch: str, max_shard_size: str | None = None) -> Path:
    """A tiny random model of `arch` and its tokenizer in `folder`; its safetensors in files of at most
    `max_shard_size` (with a model.safetensors.index.json) when given."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer("gpt2" if arch == "gpt2" else "llama")
    vocab = len(tokenizer) + 8  # padded vocabulary: more embedding rows than tokens
    torch.manual_seed(0)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=512, n_embd=32, n_layer=2, n_head=4,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return _save_tiny_backbone(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_llama_sharded(tmp_path_factory) -> Path:
    """`tiny_llama`'s weights (the same values) in several safetensors files."""
    return _save_tiny_backbone(tmp_path_factory.mktemp("tiny-llama-sharded"), "llama", max_shard_size="20KB")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return _save_tiny_backbone(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


def planted_raw(n_users: int = 80, n_items: int = 40, n_clusters: int = 4, seed: int = 0):
    """Users and items in clusters; 90% of a user's items come from the user's cluster; texts name the cluster."""
    from data_prep.raw import RawBuilder

    rng = np.random.default_rng(seed)
    builder = RawBuilder("planted", "generic")
    item_cluster = np.arange(n_items) % n_clusters
    for u in range(n_users):
        c = u % n_clusters
        own = np.flatnonzero(item_cluster == c)
        other = np.flatnonzero(item_cluster != c)
        n = int(rng.integers(6, 10))
        picks = list(rng.choice(own, size=min(n, own.shape[0]), replace=False))
        if rng.random() < 0.5:
            picks.append(int(rng.choice(other)))
        for t, j in enumerate(picks):
            builder.add_interaction(f"u{u}", f"i{j}", 1000 + t, review=f"great {CLUSTER_WORDS[item_cluster[j]]}")
        builder.set_user_text(f"u{u}", f"a user who loves {CLUSTER_WORDS[c]}")
    for j in range(n_items):
        builder.set_item_text(f"i{j}", f"a {CLUSTER_WORDS[item_cluster[j]]}")
    return builder.build()


@pytest.fixture(scope="session")
def planted_dataset(tmp_path_factory) -> Path:
    from data_prep.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "planted"
    prepare(planted_raw(), out, seed=0)
    return out


def tiny_overrides(dataset: Path, backbone: Path, out: Path, **extra: object) -> list[str]:
    """Config overrides for a fast run on the planted dataset with a tiny backbone."""
    values = {
        "data.dataset": str(dataset), "model.backbone": str(backbone), "model.dtype": "float32",
        "output_dir": str(out), "pretrain.warmup_epochs": 2, "pretrain.rounds": 3, "pretrain.batch_size": 8,
        "pretrain.lr": 0.01, "finetune.epochs": 4, "finetune.batch_size": 8, "finetune.lr": 0.01,
        "finetune.patience": 4, "baselines.multivae_epochs": 10, "eval.batch_size": 64,
        "tracking.mlflow": False,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


# ---- whole training runs on the planted dataset ------------------------------------------------------

# The smallest schedule (ablations, resume, CLI): one epoch of everything, no reviews, nothing else.
SMALL = {
    "pretrain.warmup_epochs": 1, "pretrain.rounds": 1, "finetune.epochs": 1, "data.reviews": False,
    "baselines.mostpop": False, "baselines.multivae": False, "baselines.ease": False, "tracking.mlflow": False,
}
METRICS = ("recall@20", "recall@40", "ndcg@100")
TIMING_KEYS = ("seconds", "tokens_per_s")  # history values that legitimately differ between runs
N_USERS, N_ITEMS = 80, 40  # planted_raw() defaults
# SMALL for fold-in and cold-start runs: MR as a mean (the quick recipe's scale), weak: the random
# backbone's text signal is small beside it
FOLD_IN_SMALL = {**SMALL, "pretrain.mr_reduction": "mean", "pretrain.lambda_c": 0.01}


def run_config(dataset: Path, backbone: Path, out: Path, **extra: object):
    """The resolved config of a tiny run (`tiny_overrides`) with `extra` keys."""
    from trainer.config_loading import load_config

    return load_config(None, tiny_overrides(dataset, backbone, out, **extra))


def run_results(out: Path) -> dict:
    """A finished run's results.json."""
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def run_units(out: Path) -> list[str]:
    """The tags of a finished run's epoch units, in order."""
    return [h["unit"] for h in run_results(out)["history"]]


def history_values(history: list[dict]) -> list[dict]:
    """History entries without the wall-clock fields."""
    return [{k: v for k, v in h.items() if not k.endswith(TIMING_KEYS)} for h in history]


def copy_run(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def write_yaml(path: Path, values: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


# The shared run: lr 0.02 with batch 8 lowers every loss within 2 warm-up epochs, 4 rounds and 4
# finetuning epochs (checked with seeds 0, 1, 2), in ~3 s of training on 2 CPU cores. Reviews are left
# out here (they multiply the content steps by 5); the GPT-2 run of test_pipeline.py keeps them. The
# warm-up applies MR (not the default): without it, λ_c = 1 summed over this batch's IDs pulls the
# collaborative tables toward content tables that drifted in the warm-up, and the item-space loss rises
# over the rounds.
MAIN_SCHEDULE = {
    "data.reviews": False, "pretrain.warmup_mr": True, "pretrain.warmup_epochs": 2, "pretrain.rounds": 4, "pretrain.lr": 0.02, "finetune.epochs": 4,
    "finetune.patience": 4, "baselines.multivae": True, "baselines.ease": True, "baselines.multivae_epochs": 10,
}


@dataclass
class Trained:
    run: Any  # trainer.pipeline.TrainingRun, kept in memory
    rows: dict[str, dict[str, float]]
    out: Path
    tracking_uri: str
    experiment: str
    results: dict[str, Any]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, planted_dataset, tiny_llama) -> Trained:
    """The shared run (tiny LLaMA, MLflow on a SQLite store in a temp folder, Multi-VAE and EASE on),
    trained once through `TrainingRun` and kept in memory for comparisons (test_pipeline.py,
    test_saved_model.py). Everything is seeded by the config, so every number is deterministic."""
    from trainer.pipeline import TrainingRun

    root = tmp_path_factory.mktemp("pipeline")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment = "pipeline-test"
    config = run_config(planted_dataset, tiny_llama, root / "run", **MAIN_SCHEDULE, **{
        "tracking.mlflow": True, "tracking.tracking_uri": uri, "tracking.experiment": experiment,
    })
    run = TrainingRun(config, progress=False)
    rows = run.run()
    return Trained(run, rows, root / "run", uri, experiment, run_results(root / "run"))


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory, planted_dataset, tiny_llama):
    """launched_runs.SharedRuns: the 1-rank runs of the multi-rank schedule, trained once per session."""
    from launched_runs import SharedRuns

    return SharedRuns(planted_dataset, tiny_llama, tmp_path_factory.mktemp("shared-runs"))


def load_script(name: str, folder: str = "scripts"):
    """A script of `scripts/` (or another folder: "benchmarks"; not a package) imported as a module, e.g.
    load_script("amazon_sample")."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- a local Ray cluster ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RayCluster:
    address: str  # dashboard address for `ray job submit --address`
    session: int  # process session of every process of the cluster (the head's pid)


@pytest.fixture(scope="session")
def ray_cluster():
    """One loopback Ray cluster shared by the session's Ray tests, stopped by killing exactly its
    process group (ray_jobs/local_cluster.py)."""
    from ray_jobs.local_cluster import start_local_cluster, stop_local_cluster

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head, address = start_local_cluster(Path(temp_dir), num_cpus=2, timeout=90)
    try:
        yield RayCluster(address, head.pid)
    finally:
        stop_local_cluster(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_process_group(process: subprocess.Popen, timeout: float = 30) -> bool:
    """SIGTERM the process group a server started in (start_new_session=True); SIGKILL it after `timeout`
    seconds. True when it exited on SIGTERM."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
        return False
