"""DeepSpeed ZeRO-3 on CPU (gloo): 2 ranks = 1 rank = plain engine, 2 loopback nodes without ssh = 2
ranks on one node, partitioning, step isolation, SIGKILL + exact resume, damaged checkpoints, export
without the launcher.

The 1-rank and 2-rank runs start once (module fixture), the plain engine's once per session (conftest.py's
`shared_runs`), and every assertion shares them. Subprocesses
run with one OpenMP thread each (deterministic reductions, no oversubscription on 2 cores).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_overrides
from launched_runs import (LAUNCH_VARS, METRICS, REPO, SCHEDULE, assert_same_history, assert_same_run,
                           command, final_tables, launch_env, results, run_nodes, run_training, shm_buffers)
from trainer.checkpoint import CheckpointError, load_checkpoint
from trainer.config import ConfigError
from trainer.config_loading import load_config
from trainer.distributed import free_port
from trainer.phases import StepKind

pytestmark = pytest.mark.slow
SETTINGS = {**SCHEDULE, "checkpoint.keep": 3}


def _overrides(dataset: Path, backbone: Path, out: Path, engine: str = "deepspeed") -> list[str]:
    return tiny_overrides(dataset, backbone, out, **SETTINGS, **{"distributed.engine": engine})


@dataclass
class Runs:
    one: Path  # DeepSpeed, 1 rank, plain process
    two: Path  # DeepSpeed, 2 ranks, DeepSpeed launcher (scripts/deepspeed_single_node.sh)
    plain: Path  # plain engine, in this process (conftest.py's `shared_runs`)
    args_one: list[str]


@pytest.fixture(scope="module")
def runs(planted_dataset, tiny_llama, shared_runs, tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("zero3")
    args_one = _overrides(planted_dataset, tiny_llama, root / "one")
    run_training(args_one, 1, root / "one.log")
    run_training(_overrides(planted_dataset, tiny_llama, root / "two"), 2, root / "two.log")
    return Runs(root / "one", root / "two", shared_runs.plain, args_one)


def test_two_ranks_equal_one_rank(runs: Runs) -> None:
    """Same per-epoch losses (float tolerance 1e-5 relative: sums are reduced in another order) and
    the same final metrics and tables."""
    assert results(runs.one)["engine"] == "deepspeed-zero3 x1" and results(runs.two)["engine"] == "deepspeed-zero3 x2"
    assert_same_run(runs.one, runs.two)


def test_finished_ranks_leave_no_shared_memory_buffer(runs: Runs) -> None:
    """DeepSpeed's CPU comm op puts a ~66 MB all-reduce buffer per rank in /dev/shm and never unlinks it;
    each rank unlinks its own once the group has started (`init_distributed`), so runs do not fill /dev/shm."""
    assert results(runs.two)["engine"] == "deepspeed-zero3 x2"
    assert not [str(p) for p in shm_buffers(2) if p.exists()]


def test_two_nodes_without_ssh_equal_two_ranks_on_one_node(runs: Runs, planted_dataset, tiny_llama,
                                                           tmp_path: Path) -> None:
    """scripts/deepspeed_multi_node.sh --no-ssh --node-rank N once per loopback "node" of one slot, as on
    a cluster without ssh: each launcher starts its node's rank only, and the two train as 2 ranks on
    one node do (the same tolerance)."""
    out = tmp_path / "run"
    run_nodes(_overrides(planted_dataset, tiny_llama, out), 2, tmp_path)
    for node in (0, 1):
        log = (tmp_path / f"node{node}.log").read_text()
        assert f"nnodes=2, num_local_procs=1, node_rank={node}" in log and "dist_world_size=2" in log
    assert results(out)["engine"] == "deepspeed-zero3 x2"
    assert_same_run(runs.two, out)


def test_zero3_one_rank_equals_the_plain_engine(runs: Runs) -> None:
    assert_same_history(results(runs.plain), results(runs.one), rel=1e-5)


def test_trainable_partition_halves_with_two_ranks(runs: Runs) -> None:
    (one,) = results(runs.one)["ranks"]
    two = results(runs.two)["ranks"]
    assert [r["rank"] for r in two] == [0, 1]
    assert one["trainable_elements_on_rank"] == (2 * 80 + 2 * 40) * 32  # all four tables (K = 32) on 1 rank
    for rank in two:
        assert rank["trainable_elements_on_rank"] == pytest.approx(one["trainable_elements_on_rank"] / 2, rel=0.01)


def test_export_from_a_zero3_checkpoint_without_launcher(runs: Runs, tmp_path: Path) -> None:
    """`cllm4rec export` needs no launcher; its tables equal DeepSpeed's own fp32 partitions, merged."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from trainer.cli import main

    assert main(["export", str(runs.two), "--out", str(tmp_path / "exported")]) == 0
    exported = load_file(str(tmp_path / "exported" / "tables.safetensors"))
    latest = runs.two / "checkpoints" / (runs.two / "checkpoints" / "latest").read_text().strip()
    # DeepSpeed's files are pickles: read here only because this run wrote them and COMPLETE vouches for them
    load_checkpoint(latest)
    merged = get_fp32_state_dict_from_zero_checkpoint(str(latest / "deepspeed"), tag="state")
    for name, table in exported.items():
        assert torch.equal(table, merged[name].float()), name


def test_resume_refuses_another_engine_or_world_size(runs: Runs, planted_dataset, tiny_llama, tmp_path) -> None:
    from trainer.pipeline import train

    out = tmp_path / "run"
    shutil.copytree(runs.two, out)
    config = load_config("quick", _overrides(planted_dataset, tiny_llama, out, engine="plain"))
    with pytest.raises(CheckpointError, match=r"engine: checkpoint has deepspeed-zero3 x2, current run has plain"):
        train(config, start="resume", progress=False)


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen, phase: str, timeout: float = 240) -> str:
    """Poll `latest` until it names a mid-epoch checkpoint of `phase`; returns its tag."""
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tag = latest.read_text().strip() if latest.is_file() else ""
        if phase in tag and "-s0" in tag:
            return tag
        if proc.poll() is not None:
            raise AssertionError(f"training ended before a mid-epoch {phase} checkpoint (last: {tag!r})")
        time.sleep(0.005)
    raise AssertionError(f"no mid-epoch {phase} checkpoint within {timeout} s")


def _kill_during(args: list[str], out: Path, phase: str, log: Path, resume: bool, ranks: int = 1) -> Path:
    """Start training, SIGKILL every process of it right after it checkpoints inside a `phase` epoch;
    return that checkpoint."""
    with log.open("w") as sink:
        proc = subprocess.Popen(command([*(["--resume"] if resume else []), *args], ranks), cwd=REPO, env=launch_env(),
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            tag = _wait_for_checkpoint(out, proc, phase)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and all its ranks
            proc.wait(timeout=60)
    # the ranks unlinked their shared-memory buffers when the group started, so a kill leaves none behind
    assert not [str(p) for p in shm_buffers(ranks) if p.exists()]
    return out / "checkpoints" / tag


def _moved(args: list[str], out: Path) -> list[str]:
    return [a if not a.startswith("output_dir=") else f"output_dir={out}" for a in args]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(runs: Runs, tmp_path: Path) -> None:
    """Killed inside an L-step epoch, resumed, killed inside a finetuning epoch (after damaging the
    newest checkpoint, which must be skipped), resumed to the end: final tables bit-equal to the
    uninterrupted 1-rank run, same metrics and per-epoch losses."""
    out = runs.one.parent / "killed"
    args = _moved(runs.args_one, out)

    first = _kill_during(args, out, "lstep", tmp_path / "kill1.log", resume=False)
    state = json.loads((first / "state.json").read_text())
    assert state["in_progress"]["unit"].startswith("lstep") and state["in_progress"]["progress"]["step"] > 0

    second = _kill_during(args, out, "finetune", tmp_path / "kill2.log", resume=True)
    assert "resumed from" in (tmp_path / "kill2.log").read_text()
    # damage the newest checkpoint's DeepSpeed state: resume must refuse it and take the one before
    shard = next((second / "deepspeed").rglob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[:-64])
    run_training(["--resume", *args], 1, tmp_path / "resume.log")
    log = (tmp_path / "resume.log").read_text()
    assert f"ignoring checkpoint {second}" in log and "is corrupted" in log

    for name, table in final_tables(runs.one).items():
        assert torch.equal(final_tables(out)[name], table), name
    killed, reference = results(out), results(runs.one)
    for key in METRICS:
        assert killed["models"]["CLLM4Rec"][key] == reference["models"]["CLLM4Rec"][key]
    assert_same_history(reference, killed, rel=1e-12)


def test_two_rank_sigkill_mid_epoch_resume_equals_uninterrupted(runs: Runs, tmp_path: Path) -> None:
    """Both ranks killed inside an L-step epoch and resumed: every rank continues from its own
    running sums, so the per-epoch losses, tables and metrics equal the uninterrupted 2-rank run."""
    out = runs.two.parent / "killed-two"
    args = _moved(runs.args_one, out)
    first = _kill_during(args, out, "lstep", tmp_path / "kill.log", resume=False, ranks=2)
    assert len(json.loads((first / "state.json").read_text())["in_progress"]["rank_sums"]) == 2
    run_training(["--resume", *args], 2, tmp_path / "resume.log")
    killed, reference = results(out), results(runs.two)
    assert_same_history(reference, killed, rel=1e-12)
    for key in METRICS:
        assert killed["models"]["CLLM4Rec"][key] == reference["models"]["CLLM4Rec"][key]
    for name, table in final_tables(runs.two).items():
        assert torch.equal(final_tables(out)[name], table), name


@pytest.fixture(scope="module")
def group_of_one():
    """A process group of one in this process, left (and every variable restored) after the module."""
    from trainer.distributed import init_distributed, shutdown_distributed

    with pytest.MonkeyPatch.context() as patch:  # the engine's "auto" reads WORLD_SIZE: restore it
        for name in LAUNCH_VARS:
            patch.delenv(name, raising=False)
        for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": str(free_port())}.items():
            patch.setenv(name, value)
        yield init_distributed("cpu", require_group=True)
        shutdown_distributed()


def _zero3_engine(overrides: list[str], dist):
    """(run parts, DeepSpeedEngine, backbone weights before) for a 1-rank ZeRO-3 engine in this process."""
    from trainer.build import build_run
    from trainer.deepspeed_engine import DeepSpeedEngine, fill_ds_config, resolve_ds_config

    parts = build_run(load_config("quick", overrides), torch.device("cpu"), torch.float32)
    before = {n: p.detach().clone() for n, p in parts.model.backbone.named_parameters()}
    cpu = torch.device("cpu")
    engine = DeepSpeedEngine(parts.model, 0.05, 0.01, dist=dist, device=cpu,
                             ds_config=fill_ds_config(resolve_ds_config("zero3_cpu", cpu), 4, 1))
    return parts, engine, before


def test_zero3_step_moves_only_its_own_tables(planted_dataset, tiny_llama, group_of_one) -> None:
    """Under ZeRO-3 an L-step leaves the content tables bit-identical and a C-step the collaborative
    ones (ZeRO keeps stale gradient partitions: the optimizer must skip the inactive set), and the
    frozen backbone never moves."""
    import deepspeed

    from trainer.data import epoch_rng

    parts, engine, backbone_before = _zero3_engine(_overrides(planted_dataset, tiny_llama, Path("unused")), group_of_one)
    collab = next(parts.corpora.collab_batches(epoch_rng(0, "t"), 4, True))
    content = next(parts.corpora.content_batches(epoch_rng(0, "t"), 4))

    snap = engine.full_tables()
    engine.train_step(StepKind.L_STEP, collab)
    after_l = engine.full_tables()
    assert not torch.equal(after_l["collab_item"], snap["collab_item"])
    assert torch.equal(after_l["content_item"], snap["content_item"]) and torch.equal(after_l["content_user"], snap["content_user"])
    for _ in range(2):
        engine.train_step(StepKind.C_STEP, content)
    after_c = engine.full_tables()
    assert not (torch.equal(after_c["content_user"], after_l["content_user"])
                and torch.equal(after_c["content_item"], after_l["content_item"]))
    assert torch.equal(after_c["collab_item"], after_l["collab_item"]) and torch.equal(after_c["collab_user"], after_l["collab_user"])
    # finetuning starts the collaborative group with fresh Adam state and the finetuning rate
    engine.activate(StepKind.FINETUNE)
    (group,) = [g for g in engine.optimizer.param_groups if g["name"] == "collab"]
    assert group["stage"] == "finetune" and group["lr"] == 0.01
    assert all(t not in engine.optimizer.state for t in engine.group_tensors(engine.optimizer.param_groups.index(group)))
    params = list(parts.model.backbone.parameters())
    with deepspeed.zero.GatheredParameters(params):
        for name, param in parts.model.backbone.named_parameters():
            assert torch.equal(param.detach(), backbone_before[name]), name


def test_ds_config_batch_keys_come_from_the_trainer(tmp_path: Path) -> None:
    from trainer.deepspeed_engine import fill_ds_config, resolve_ds_config

    filled = fill_ds_config(resolve_ds_config("zero3_bf16", torch.device("cpu")), batch_size=20, world_size=8)
    assert (filled["train_micro_batch_size_per_gpu"], filled["gradient_accumulation_steps"], filled["train_batch_size"]) == (3, 1, 24)
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps({**json.loads((REPO / "ds_configs" / "zero3_cpu.json").read_text()),
                                 "train_micro_batch_size_per_gpu": 16}))
    with pytest.raises(ConfigError, match=r"clash.json: 'train_micro_batch_size_per_gpu' is 16 but the trainer"):
        fill_ds_config(clash, batch_size=20, world_size=2)
    clip = tmp_path / "clip.json"
    clip.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ConfigError, match=r"clip.json: 'gradient_clipping' must be 0.0"):
        fill_ds_config(clip, batch_size=4, world_size=1)
    with pytest.raises(ConfigError, match=r"DeepSpeed config 'zero9' not found \(shipped: zero3_bf16, zero3_cpu, zero3_offload"):
        resolve_ds_config("zero9", torch.device("cpu"))


def test_zero3_lora_trains_only_adapters_and_tables(planted_dataset, tiny_llama, group_of_one) -> None:
    """LLM-FtAll with a LoRA adapter under ZeRO-3: the optimizer holds tables + adapters only, a step
    moves the adapters, and the base weights stay bit-identical."""
    import deepspeed

    from trainer.data import epoch_rng

    parts, engine, before = _zero3_engine([*_overrides(planted_dataset, tiny_llama, Path("unused")),
                                           "ablation=ftall-lora", "model.lora_target_modules=[q_proj, v_proj]"], group_of_one)
    named = dict(parts.model.backbone.named_parameters())
    adapters = sorted(n for n, p in named.items() if p.requires_grad)
    assert adapters and all("lora_" in n for n in adapters)
    tables = (2 * parts.dataset.n_users + 2 * parts.dataset.n_items) * parts.model.dim
    assert engine.stats()["trainable_elements_on_rank"] == tables + sum(before[n].numel() for n in adapters)
    engine.train_step(StepKind.L_STEP, next(parts.corpora.collab_batches(epoch_rng(0, "t"), 4, True)))
    with deepspeed.zero.GatheredParameters(list(named.values())):
        moved = {n for n, p in named.items() if not torch.equal(p.detach(), before[n])}
    assert moved and moved <= set(adapters)


# every shipped DeepSpeed config: (bf16 on, where parameters and optimizer state are offloaded)
SHIPPED_DS_CONFIGS = {"zero3_bf16": (True, None), "zero3_cpu": (False, None), "zero3_offload": (True, "cpu")}


@pytest.mark.parametrize("name", sorted(SHIPPED_DS_CONFIGS))
def test_shipped_ds_configs_take_the_batch_keys_and_parse_in_deepspeed(name: str) -> None:
    """Each file of ds_configs/ is filled by the trainer and then accepted by DeepSpeed's own parser (a
    misspelt key inside a section, e.g. zero_optimization.offload_parm, is an error there): ZeRO-3, no
    clipping, the trainer's batch, bf16 and offloading as listed above."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from trainer.deepspeed_engine import fill_ds_config, resolve_ds_config

    assert sorted(p.stem for p in (REPO / "ds_configs").glob("*.json")) == sorted(SHIPPED_DS_CONFIGS)
    parsed = DeepSpeedConfig(fill_ds_config(resolve_ds_config(name, torch.device("cpu")), batch_size=6, world_size=1))
    assert (parsed.train_batch_size, parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps) == (6, 6, 1)
    assert parsed.zero_optimization_stage == 3 and parsed.gradient_clipping == 0.0
    bf16, offload = SHIPPED_DS_CONFIGS[name]
    assert parsed.bfloat16_config.enabled is bf16
    zero = parsed.zero_config
    for part in (zero.offload_param, zero.offload_optimizer):
        assert (None if part is None else part.device) == offload, name


@pytest.mark.parametrize("fails", [False, True])
def test_leaving_the_group_waits_for_peers_only_after_success(monkeypatch, fails: bool) -> None:
    """`leaving_process_group`: a body that returned meets its peers at a barrier before the group is
    destroyed (so no gloo thread is left to finish a collective while the interpreter exits); a body that
    raised leaves at once (a failed peer would never reach the barrier) and the error goes on."""
    from trainer import distributed

    calls = []
    monkeypatch.setattr(distributed.torch_dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.torch_dist, "get_rank", lambda: 0)
    monkeypatch.setattr(distributed.torch_dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.torch_dist, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setenv("MASTER_PORT", "not-a-run")
    with pytest.raises(ValueError, match="the body failed") if fails else contextlib.nullcontext():
        with distributed.leaving_process_group():
            calls.append("body")
            if fails:
                raise ValueError("the body failed")
    assert calls == (["body", "destroy"] if fails else ["body", "barrier", "destroy"])
