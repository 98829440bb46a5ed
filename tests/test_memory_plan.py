"""The memory preflight: the arithmetic of each engine against hand-computed bytes and docs/cluster.md's
figures, the refusal before a model is built, the check's inputs (backbone sizes, available memory), and
`cllm4rec plan-memory`."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from conftest import SMALL, run_config

from trainer import cli, memory_check
from trainer.deepspeed_engine import fill_ds_config, resolve_ds_config
from trainer.memory_check import (InsufficientMemory, backbone_sizes, cgroup_available, check_memory, plan_of_run,
                                  run_setup, share_per_rank)
from trainer.memory_plan import (BASELINES, BUILD, DEVICE, GPU_ALLOWANCE, HOST, SAVE, STEP, Setup, Shapes, gib,
                                 plan_memory, render, shortfalls)

# N = 10 users, J = 20 items, K = 8: one table set (N + J)·K = 240 elements, the four tables E = 480, the
# largest table 160; b·s = 4 × 12 = 48 tokens per rank, whose activations per layer at 16 bits are
# 48 × (34·8 + 5·2·12) = 18,816 bytes; content documents of 6 main tokens over a vocabulary of 50 words.
SMALL_SHAPES = Shapes(users=10, items=20, dim=8, layers=2, heads=2, backbone_params=1000, trained_backbone=0,
                      seq_len=12, batch=4, vocab=50, main_tokens=6)
ACTIVATIONS_16 = 2 * 18_816


class by_name:  # noqa: N801 (reads as a lookup)
    """The terms of a plan by the start of their names: plan_terms["backbone partition"] → (bytes, memory, moments)
    of the one term whose name starts so."""

    def __init__(self, plan):
        self.terms = plan.terms

    def __getitem__(self, start: str) -> tuple[int, str, tuple[str, ...]]:
        found = [t for t in self.terms if t.name.startswith(start)]
        assert len(found) == 1, (start, [t.name for t in self.terms])
        return found[0].nbytes, found[0].memory, found[0].moments

    def __contains__(self, start: str) -> bool:
        return any(t.name.startswith(start) for t in self.terms)


def totals(plan, memory: str) -> dict[str, int]:
    return {m: plan.total(memory, m) for m in (BUILD, STEP, SAVE, BASELINES)}


def test_plain_engine_bytes_by_hand():
    setup = Setup(engine="plain", ranks=1, gpu=False, dtype_bytes=4, trained_sets=2, item_head=True,
                  vocab_head=True, checkpointing=False, ease=True)
    plan = plan_memory(SMALL_SHAPES, setup)
    terms = by_name(plan)
    assert terms["backbone, whole"] == (4000, HOST, (BUILD, STEP, SAVE, BASELINES))
    assert terms["ID tables, 4 × fp32"][0] == 4 * 480
    assert terms["Adam m, v of 2 trained table set"][0] == 8 * 240 * 2
    assert terms["gradients of the table set a step trains, fp32"][0] == 4 * 240
    assert terms["checkpoint copies on rank 0: tables, optimizer state, trained weights"][:2] == (1920 + 3840, HOST)
    assert terms["backbone activations kept for backward"][0] == ACTIVATIONS_16 * 2  # fp32: twice the 16-bit bytes
    assert terms["item softmax: stored exps of one row chunk"][0] == 48 * 20 * 4
    assert terms["vocabulary head: logits and their gradient (24 tokens × 50 words)"][0] == 2 * 4 * 6 * 50 * 4
    assert terms["EASE on rank 0: 4 × J² float64"][:3] == (32 * 20**2, HOST, (BASELINES,))
    assert "trained backbone" not in terms  # 0 bytes: left out
    held = 4000 + 1920
    state = 3840 + 960
    assert plan.memories() == (HOST,)
    step = 75_264 + 3840 + 9600  # activations, stored exps, vocabulary head
    assert totals(plan, HOST) == {BUILD: held, STEP: held + state + step, SAVE: held + state + 5760,
                                  BASELINES: held + state + 12_800}
    assert plan.peak(HOST) == (held + state + step, STEP)


def test_zero3_bf16_bytes_by_hand():
    setup = Setup(engine="zero3", ranks=4, gpu=True, dtype_bytes=2, trained_sets=2, item_head=True,
                  vocab_head=False, checkpointing=False, ease=False, partitioned_build=True, grad_bytes=2,
                  max_live=10**9)
    plan = plan_memory(SMALL_SHAPES, setup)
    terms = by_name(plan)
    everywhere = (BUILD, STEP, SAVE, BASELINES)
    assert terms["backbone partition"] == (500, DEVICE, everywhere)  # ⌈1000 / 4⌉ × 2 B
    assert terms["ID table partitions, 4 × 2 B ÷ 4"] == (240, DEVICE, everywhere)  # built into partitions
    assert terms["fp32 master partitions of the tables and trained weights ÷ 4"][0] == 480
    assert terms["gradient partitions, 2 B ÷ 4"][0] == 240
    assert terms["Adam m, v of 2 trained table set"][0] == 960
    assert terms["gathered backbone working set"][:3] == (2000, DEVICE, (BUILD, STEP))
    assert terms["gathered ID tables, all four, 2 B"][0] == 960
    assert terms["dense gradient of the largest trained table and its reduce-scatter copy"][0] == 640
    assert terms["item head's fp32 copies of the gathered item table and of its gradient"][0] == 1280
    assert terms["one whole table on the GPU while it is gathered, fp32"][:3] == (640, DEVICE, (SAVE,))
    assert terms["whole fp32 tables and trained weights gathered for a checkpoint"][:2] == (1920, HOST)
    assert terms["backbone activations kept for backward"][0] == ACTIVATIONS_16
    assert terms["item softmax: stored exps of one row chunk"][0] == 48 * 20 * 2
    assert terms["allocator and NCCL buffers, fragmentation"] == (GPU_ALLOWANCE, DEVICE, everywhere)
    assert "whole model before it is partitioned" not in terms
    assert totals(plan, DEVICE) == {BUILD: GPU_ALLOWANCE + 2740, STEP: GPU_ALLOWANCE + 46_852,
                                    SAVE: GPU_ALLOWANCE + 3060, BASELINES: GPU_ALLOWANCE + 2420}
    assert totals(plan, HOST) == {BUILD: 0, STEP: 0, SAVE: 3840, BASELINES: 0}


def test_zero3_offload_and_whole_build_move_their_terms():
    setup = Setup(engine="zero3", ranks=4, gpu=True, dtype_bytes=2, trained_sets=1, item_head=False,
                  vocab_head=False, checkpointing=False, ease=False, partitioned_build=False, offload_params=True,
                  offload_optimizer=True, grad_bytes=2)
    terms = by_name(plan_memory(SMALL_SHAPES, setup))
    assert terms["backbone partition"][:2] == (500, HOST)
    assert terms["ID table partitions, 4 × 2 B ÷ 4"] == (240, HOST, (STEP, SAVE, BASELINES))  # made after the build
    assert terms["fp32 master partitions of the tables and trained weights ÷ 4"][:2] == (480, HOST)
    assert terms["CPU Adam's fp32 gradient partitions ÷ 4"][:2] == (480, HOST)
    assert terms["Adam m, v of 1 trained table set"][:2] == (480, HOST)  # one set: ⌈240 / 4⌉ × 8 B
    # the whole model on every rank first: backbone 1000 × 2 B, fp32 tables 4·480, their bf16 casts 2·480
    assert terms["whole model before it is partitioned"][:3] == (2000 + 1920 + 960, DEVICE, (BUILD,))
    assert terms["backbone loaded in host memory before it moves to the GPU"][:3] == (2000, HOST, (BUILD,))
    assert "item" not in terms  # no item-head step: no exchange, fp32 copies or stored exps


def test_row_sharded_bytes_by_hand():
    setup = Setup(engine="rows", ranks=4, gpu=True, dtype_bytes=4, trained_sets=2, item_head=True,
                  vocab_head=False, checkpointing=True, ease=False)
    plan = plan_memory(SMALL_SHAPES, setup)
    terms = by_name(plan)
    shard = (math.ceil(10 / 4) + math.ceil(20 / 4)) * 8  # one set's rows on a rank: 64 elements
    assert terms["backbone, whole on every rank"][:2] == (4000, DEVICE)
    assert terms["ID tables, whole, before they are sharded"][:3] == (1920, DEVICE, (BUILD,))
    assert terms["ID table rows of this rank, 4 × fp32 ÷ 4"][0] == 2 * shard * 4
    assert terms["Adam m, v of 2 trained table set"][0] == 8 * shard * 2
    assert terms["gradients of the table set a step trains, fp32 ÷ 4"][0] == 4 * shard
    assert terms["checkpoint copies of this rank's rows and their optimizer state"][:3] == (2 * shard * 4 + 1024, HOST,
                                                                                          (SAVE,))
    assert not [t.name for t in terms.terms if "gathered" in t.name]  # no rank gathers a whole table
    tokens = 4 * 48  # every rank's hidden rows
    assert terms["item head exchange: 192 hidden rows of all ranks and their gradients"][0] == tokens * 8 * 4 + tokens * 9 * 4
    assert terms["item softmax: stored exps of one row chunk"][0] == tokens * 5 * 4  # ⌈20 / 4⌉ items per rank
    sliced = by_name(plan_memory(SMALL_SHAPES, replace(setup, partitioned_build=True)))
    assert "ID tables, whole, before they are sharded" not in sliced  # each rank draws its own rows
    assert sliced["backbone loaded in host memory before it moves to the GPU"][:2] == (4000, HOST)
    # checkpointing: each layer's input (2 layers × 2·48·8 B) and one layer's whole set, at 16 bits; fp32 doubles
    assert terms["backbone activations kept for backward"][0] == (2 * 2 * 48 * 8 + 18_816) * 2
    assert plan.peak(DEVICE)[1] == STEP


def test_cluster_md_section_3_figures():
    """docs/cluster.md, section 3, A1 (ZeRO-3, 8 ranks) and C1 (row-sharded): the code gives the same GB per term."""
    llama = Shapes(users=10**6, items=10**6, dim=4096, layers=32, heads=32, backbone_params=6_738_415_616,
                   trained_backbone=0, seq_len=512, batch=3, vocab=32_000, main_tokens=128)
    a1 = by_name(plan_memory(llama, Setup(engine="zero3", ranks=8, gpu=True, dtype_bytes=2, trained_sets=2,
                                          item_head=True, vocab_head=True, checkpointing=True, ease=False,
                                          partitioned_build=True)))
    gb = lambda name: round(a1[name][0] / 1e9, 2)  # noqa: E731
    assert gb("backbone partition") == 1.68
    assert gb("gathered backbone working set") == 2.00
    state = ("ID table partitions, 4 × 2 B ÷ 8", "fp32 master partitions of the tables and trained weights ÷ 8",
             "gradient partitions, 2 B ÷ 8", "Adam m, v of 2 trained table set")
    assert round(sum(a1[name][0] for name in state) / 1e9, 2) == 32.77  # 16 B per element ÷ R
    assert gb("gathered ID tables, all four, 2 B") == 32.77
    assert gb("dense gradient of the largest trained table and its reduce-scatter copy") == 16.38
    assert gb("backbone activations kept for backward") == 0.74
    assert gb("item head's fp32 copies of the gathered item table and of its gradient") == 32.77  # not in the table
    c1 = by_name(plan_memory(llama, Setup(engine="rows", ranks=8, gpu=True, dtype_bytes=2, trained_sets=2,
                                          item_head=True, vocab_head=True, checkpointing=False, ease=False)))
    assert round(c1["backbone, whole on every rank"][0] / 1e9, 2) == 13.48  # C1 with the backbone replicated
    assert round(c1["backbone activations kept for backward"][0] / 1e9, 2) == 10.87


@pytest.fixture
def tiny_config(planted_dataset, tiny_llama, tmp_path):
    return run_config(planted_dataset, tiny_llama, tmp_path / "run", **SMALL)


def available(monkeypatch, host: int | None, device: int | None = None) -> None:
    """Make every rank measure `host` / `device` bytes."""
    monkeypatch.setattr(memory_check, "host_available", lambda: host)
    monkeypatch.setattr(memory_check, "device_available", lambda device_: device)


def test_refusal_before_the_model_is_built_names_terms_and_numbers(tiny_config, monkeypatch):
    from trainer import pipeline
    from trainer.distributed import LOCAL

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the memory check")

    monkeypatch.setattr(pipeline, "build_run", no_build)
    available(monkeypatch, host=2**20)  # 1 MiB
    with pytest.raises(InsufficientMemory) as refused:
        pipeline.TrainingRun(tiny_config, progress=False)
    message = str(refused.value)
    plan = plan_of_run(tiny_config, "plain", 1, torch.device("cpu"), torch.float32, None)
    need, moment = plan.peak(HOST)
    assert f"host memory: peak {gib(need)} GiB at {moment} > {gib(2**20)} GiB available per rank" in message
    for term in plan.terms:  # every term, with its GiB
        assert term.name in message and gib(term.nbytes) in message
    assert "model.activation_checkpointing=true" in message  # what to change: the largest step term's fix
    assert "distributed.memory_check=false" in message
    assert "DOES NOT FIT" in render(plan, {HOST: 2**20}) and shortfalls(plan, {HOST: 2**20}) == [HOST]
    assert LOCAL.world_size == 1


def test_tiny_config_passes_headroom_scales_and_the_check_can_be_skipped(tiny_config, monkeypatch):
    from trainer.distributed import LOCAL

    cpu = torch.device("cpu")
    check_memory(tiny_config, LOCAL, "plain", cpu, torch.float32, None)  # this machine's real memory
    need = plan_of_run(tiny_config, "plain", 1, cpu, torch.float32, None).peak(HOST)[0]
    available(monkeypatch, host=int(need * 1.5))
    check_memory(tiny_config, LOCAL, "plain", cpu, torch.float32, None)
    tiny_config.distributed.memory_headroom = 2.0
    with pytest.raises(InsufficientMemory, match=r"× headroom 2 > "):
        check_memory(tiny_config, LOCAL, "plain", cpu, torch.float32, None)
    available(monkeypatch, host=1)
    tiny_config.distributed.memory_check = False
    check_memory(tiny_config, LOCAL, "plain", cpu, torch.float32, None)


def _check_on_a_rank(comm, config, host_bytes: list[int]) -> str:
    """check_memory on this rank of a gloo group, with `host_bytes[rank]` as this rank's host memory: "fits" or
    the refusal's message."""
    from trainer.distributed import Dist

    memory_check.host_available = lambda: host_bytes[comm.rank]
    try:
        memory_check.check_memory(config, Dist(comm.rank, comm.world, 0, active=True), "rows", torch.device("cpu"),
                                  torch.float32, None)
    except InsufficientMemory as error:
        return str(error)
    return "fits"


@pytest.mark.slow
def test_every_rank_stops_together_on_the_least_share(tiny_config, tmp_path):
    """Two ranks of one node share its host memory, and one rank's shortfall stops both (no rank is left
    waiting in a collective)."""
    from spawn_ranks import run_ranks

    need = plan_of_run(tiny_config, "rows", 2, torch.device("cpu"), torch.float32, None).peak(HOST)[0]
    assert run_ranks(_check_on_a_rank, 2, tmp_path / "enough", tiny_config, [4 * need, 4 * need]) == ["fits", "fits"]
    # rank 1 sees 1.5 × the peak: enough for one rank, not for the node's two
    refused = run_ranks(_check_on_a_rank, 2, tmp_path / "short", tiny_config, [4 * need, 3 * need // 2])
    assert refused[0] == refused[1] and refused[0].startswith("the run needs more memory per rank than a rank has")
    assert f"> {gib(3 * need // 4)} GiB available per rank" in refused[0]


def test_run_setup_follows_the_schedule_and_the_deepspeed_config(tiny_config):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    plain = run_setup(tiny_config, "plain", 1, cpu, torch.float32, None)
    assert (plain.trained_sets, plain.item_head, plain.vocab_head, plain.gpu, plain.dtype_bytes) == (2, True, True, False, 4)
    offload = fill_ds_config(resolve_ds_config("zero3_offload", cuda), 8, 2)
    zero = run_setup(tiny_config, "zero3", 2, cuda, torch.bfloat16, offload)
    assert (zero.offload_params, zero.offload_optimizer, zero.grad_bytes, zero.partitioned_build) == (True, True, 2, True)
    cpu_ds = fill_ds_config(resolve_ds_config("zero3_cpu", cpu), 8, 2)
    assert run_setup(tiny_config, "zero3", 2, cpu, torch.float32, cpu_ds).max_live == 100_000_000
    tiny_config.pretrain.content = False  # LLM-CF: the collaborative set alone
    assert run_setup(tiny_config, "plain", 1, cpu, torch.float32, None).trained_sets == 1
    tiny_config.pretrain.content, tiny_config.pretrain.rounds, tiny_config.finetune.enabled = True, 0, False
    content_only = run_setup(tiny_config, "plain", 1, cpu, torch.float32, None)
    assert (content_only.trained_sets, content_only.item_head, content_only.vocab_head) == (1, False, True)


def test_backbone_sizes_match_the_loaded_model_and_peft(tiny_llama, tiny_gpt2):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.config import ModelConfig

    for folder in (tiny_llama, tiny_gpt2):
        model = AutoModelForCausalLM.from_pretrained(folder)
        sizes = backbone_sizes(ModelConfig(backbone=str(folder)))
        assert sizes.params == sum(p.numel() for p in model.parameters())  # tied weights once
        assert (sizes.dim, sizes.layers, sizes.heads, sizes.adapters) == (32, 2, 4, 0)
        assert sizes.vocab == model.get_output_embeddings().weight.shape[0]
        lora = backbone_sizes(ModelConfig(backbone=str(folder), train_backbone="lora", lora_r=4))
        adapted = get_peft_model(model, LoraConfig(r=4))
        assert lora.adapters == sum(p.numel() for p in adapted.parameters() if p.requires_grad) > 0
        assert lora.params == sizes.params + lora.adapters


def test_share_per_rank_and_cgroup_room(tmp_path):
    measured = [{"node": "a", HOST: 8 * 2**30, DEVICE: None}, {"node": "a", HOST: 8 * 2**30, DEVICE: None},
                {"node": "b", HOST: 6 * 2**30, DEVICE: None}]
    assert share_per_rank(measured) == {HOST: 4 * 2**30, DEVICE: None}  # node a's 8 GiB over its 2 ranks
    gpus = [{"node": "a", HOST: None, DEVICE: 5}, {"node": "b", HOST: None, DEVICE: 3}]
    assert share_per_rank(gpus) == {HOST: None, DEVICE: 3}  # the least free GPU memory of any rank
    v2, v1 = tmp_path / "job", tmp_path / "memory" / "job"
    v1.mkdir(parents=True)
    v2.mkdir()
    (v2 / "memory.max").write_text("1000000\n")
    (v2 / "memory.current").write_text("600000\n")
    (v2 / "memory.stat").write_text("anon 400000\ninactive_file 100000\n")
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    (v1 / "memory.usage_in_bytes").write_text("5\n")
    (v1 / "memory.stat").write_text("total_inactive_file 0\n")
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/job\n0::/job\n")
    assert cgroup_available(proc, tmp_path) == 1_000_000 - 600_000 + 100_000  # limit − (usage − inactive file)
    (v2 / "memory.max").write_text("max\n")
    assert cgroup_available(proc, tmp_path) is None


def test_plan_memory_command(planted_dataset, tiny_llama, tmp_path, capsys):
    from conftest import tiny_overrides

    overrides = tiny_overrides(planted_dataset, tiny_llama, tmp_path / "run")
    assert cli.main(["plan-memory", *overrides]) == 0
    printed = capsys.readouterr().out
    assert "engine plain × 1 rank(s) on CPU" in printed and "host peak:" in printed and ": fits" in printed
    assert cli.main(["plan-memory", "--ranks", "2", "--users", "1000", "--items", "2000", "--host-memory", "0.0001",
                     "distributed.table_sharding=rows", *overrides]) == 1
    printed = capsys.readouterr().out
    assert "engine rows × 2 rank(s)" in printed and "1,000 users × 2,000 items" in printed
    assert "available 0.000 GiB per rank: DOES NOT FIT" in printed
    assert cli.main(["plan-memory", "--users", "5", *overrides]) == 2  # --items missing


def test_longest_history_reads_the_training_split(planted_dataset, tmp_path):
    import shutil

    import numpy as np

    from data_prep.errors import DataPrepError
    from data_prep.processed import load_processed
    from trainer.memory_check import longest_history

    indptr, _ = load_processed(planted_dataset).split_csr("train")
    assert longest_history(planted_dataset) == int(np.diff(indptr).max())
    broken = shutil.copytree(planted_dataset, tmp_path / "broken")
    (broken / "interactions.parquet").write_text("not parquet")
    with pytest.raises(DataPrepError, match=r"interactions\.parquet: unreadable"):
        longest_history(broken)
