"""The benchmark scripts run end to end on toy sizes and print their tables (no timing is asserted:
the figures themselves live in docs/performance.md)."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, timeout: int = 300) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table_rows(output: str) -> list[list[str]]:
    """The body rows of the markdown tables in `output`, as lists of cells."""
    rows = [line.strip("|").split("|") for line in output.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows if not row[0].strip().startswith(("K", "backbone"))]


def test_item_softmax_benchmark_times_a_baseline_alongside():
    out = run_benchmark("item_softmax.py", "--shapes", "8:300", "16:500", "--rows", "6", "--repeats", "2",
                        "--scale", "3", "--baseline", str(ROOT / "cllm4rec" / "losses.py"), "--gradient-dtype", "bfloat16",
                        "--baseline-gradient-dtype", "bfloat16")
    rows = table_rows(out)
    assert [row[:2] for row in rows] == [["8", "300"], ["16", "500"]]
    assert all(len(row) == 9 and float(row[4]) > 0 and float(row[6]) > 0 and float(row[8]) > 0 for row in rows)  # ratios
    assert "entries of std 3.0" in out and "bfloat16 gradient products, baseline: bfloat16" in out
    assert "CPU threads, AVX512-BF16 " in out and ", AMX-BF16 " in out  # the machine, in the header


@pytest.mark.slow
def test_catalogue_scale_benchmark_with_a_chosen_batch():
    out = run_benchmark("catalogue_scale.py", "--sizes", "tiny:2000", "--variants", "fused", "plain", "--users", "500",
                        "--steps", "1", "--collab-docs", "3", "--rec-users", "5", "--compare", "bf16-head", timeout=600)
    assert "L-step 3x64 items, finetuning 5 users" in out
    compared = [row for row in table_rows(out) if len(row) == 6]
    assert [row[2] for row in compared] == ["collab", "rec"] and all(float(row[5]) > 0 for row in compared)
    timed = [row for row in table_rows(out) if len(row) == 11]
    memory = [row for row in table_rows(out) if len(row) == 10 and row[-1] in ("yes", "NO")]
    # "fused+bf16-head" where the CPU has bf16 (model.head_gradient_dtype=auto)
    assert sorted((row[2].split("+")[0], row[3]) for row in timed) == [("fused", "collab"), ("fused", "rec"),
                                                                        ("plain", "collab"), ("plain", "rec")]
    assert all(float(row[6]) > 0 and float(row[7]) > 0 for row in timed)  # step / floor, at best and adjacent rates
    assert all(len(row[10].split(" / ")) == 3 for row in timed)  # the rates of backbone, logits and head gradients
    assert "| Adam (s) | Adam / floor |" in out and all(float(row[9]) > 0 for row in timed)
    assert len(memory) == 4


@pytest.mark.slow
def test_catalogue_scale_times_another_losses_file_alongside(tmp_path):
    baseline = tmp_path / "old_losses.py"
    baseline.write_text((ROOT / "cllm4rec" / "losses.py").read_text())
    out = run_benchmark("catalogue_scale.py", "--sizes", "tiny:2000", "--variants", "fused", "--users", "500",
                        "--steps", "1", "--collab-docs", "3", "--rec-users", "5", "--compare", "losses",
                        "--baseline-losses", str(baseline), timeout=600)
    compared = [row for row in table_rows(out) if len(row) == 6]
    assert [row[2] for row in compared] == ["collab", "rec"] and all(float(row[4]) > 0 for row in compared)
    refused = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "catalogue_scale.py"), "--compare", "losses"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--baseline-losses FILE" in refused.stderr


def benchmark_module(name: str):
    """benchmarks/<name>.py imported as a module, with the benchmarks folder on the path for its imports."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def catalogue_scale():
    return benchmark_module("catalogue_scale")


def test_catalogue_scale_pairs_each_step_with_the_rates_probed_around_it(monkeypatch):
    log, probes = [], iter([(100.0, 10.0), (300.0, 30.0), (500.0, 50.0), (700.0, 70.0), (900.0, 90.0)])
    clock = [0.0]  # a fake perf_counter: each call and each probe advances it by a known amount
    module = catalogue_scale()
    common = sys.modules[module.probed_steps.__module__]
    monkeypatch.setattr(common, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    def call(name: str, seconds: float):
        def step() -> None:
            log.append(name)
            clock[0] += seconds
        return step

    def probe() -> tuple[float, float]:
        log.append("probe")
        clock[0] += 1000.0  # the probes' own time is never counted
        return next(probes)

    timed = module.probed_steps({"a": call("a", 2.0), "b": call("b", 5.0)}, 2, probe)
    assert log == ["a", "b", "probe", "a", "probe", "b", "probe", "b", "probe", "a", "probe"]
    assert timed["a"] == [(2.0, 200.0, 20.0), (2.0, 800.0, 80.0)]  # its seconds, the probes either side
    assert timed["b"] == [(5.0, 400.0, 40.0), (5.0, 600.0, 60.0)]


def test_catalogue_scale_floors_use_the_best_rate_measured_for_the_same_shapes():
    floors_at_best_rates = catalogue_scale().floors_at_best_rates

    def result(tokens: int, backbone_gflops: float, logits_gflops: float, gradients: str, gradients_gflops: float) -> dict:
        parts = {"backbone": {"tflop": 1.0, "product": f"[{tokens}, 64] @ [64, 256] bfloat16", "gflops": backbone_gflops},
                 "logits": {"tflop": 0.1, "product": "[512, 64] @ [64, 4096] float32", "gflops": logits_gflops},
                 "gradients": {"tflop": 0.2, "product": f"[512, 64] @ [64, 4096] {gradients}", "gflops": gradients_gflops}}
        return {"backbone": "b", "steps": {"collab": {"seconds": 2.0, "floor_seconds": 9.0, "parts": parts}}}

    results = [result(500, 1000.0, 100.0, "bfloat16", 300.0), result(500, 2000.0, 50.0, "bfloat16", 400.0),
               result(900, 500.0, 80.0, "float32", 90.0)]
    floors_at_best_rates(results)
    steps = [r["steps"]["collab"] for r in results]
    rates = [[part["gflops"] for part in s["parts"].values()] for s in steps]
    # 900 tokens: another backbone product; fp32 head gradients share the logits' product, best of 100, 50, 80, 90
    assert rates == [[2000.0, 100.0, 400.0], [2000.0, 100.0, 400.0], [500.0, 100.0, 100.0]]
    assert steps[0]["floor_seconds"] == pytest.approx(1e3 / 2000 + 0.1e3 / 100 + 0.2e3 / 400)
    assert steps[2]["ratio"] == pytest.approx(2.0 / (1e3 / 500 + 0.1e3 / 100 + 0.2e3 / 100))
    assert all(s["own_floor_seconds"] == 9.0 for s in steps)


def test_seeded_run_comparison_names_every_difference(tmp_path):
    """benchmarks/seeded_run.py --compare: identical fingerprints pass; a changed loss or tensor hash, or a
    resumed run that differs from the run trained whole, is named by its path and fails (exit 1)."""
    run = {"history": [{"unit": "warmup-r000-e000", "content_lm_loss": 10.25}], "tensors": {"model/t::a": "f32 [2] ab"},
           "step_losses": {"finetune/step_rec_loss": [7.5, 7.25]}}
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(json.dumps({"plain": run}))
    resumed = {k: v for k, v in run.items() if k != "step_losses"}
    after.write_text(json.dumps({"plain": run, "plain+resumed": resumed}))
    ok = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeded_run.py"), "--compare", str(before), str(after)],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "identical" in ok.stdout and "plain+resumed = before.json:plain" in ok.stdout
    changed = {**resumed, "history": [{"unit": "warmup-r000-e000", "content_lm_loss": 10.250001}],
               "tensors": {"model/t::a": "f32 [2] cd"}}
    after.write_text(json.dumps({"plain": run, "plain+resumed": changed}))
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeded_run.py"), "--compare", str(before), str(after)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "plain+resumed/history[0]/content_lm_loss: 10.25 != 10.250001" in bad.stdout
    assert "plain+resumed/tensors/model/t::a: 'f32 [2] ab' != 'f32 [2] cd'" in bad.stdout


@pytest.mark.slow
def test_incremental_benchmark_prints_the_epochs_to_the_target(planted_dataset, tiny_llama, tmp_path):
    tiny = [f"model.backbone={tiny_llama}", "model.dtype=float32", "pretrain.batch_size=8", "finetune.batch_size=8",
            "finetune.epochs=2", "data.reviews=false", "baselines.mostpop=false", "baselines.multivae=false",
            "baselines.ease=false", "eval.recall_ks=[5,10]", "eval.ndcg_ks=[10]"]
    out = run_benchmark("incremental.py", "--dataset", str(planted_dataset), "--k", "5", "--out", str(tmp_path),
                        "--warm", "pretrain.warmup_epochs=0", "finetune.epochs=1", "--", *tiny, timeout=600)
    rows = {row[0]: row for row in table_rows(out) if len(row) == 7 and row[0] != "run"}
    assert list(rows) == ["earlier", "scratch", "warm"]
    assert rows["scratch"][1:3] == ["3", "2"] and rows["warm"][1:3] == ["1", "1"]  # epoch units, finetuning epochs
    assert "init from the earlier run: items 38 kept, 2 new, 0 removed; users " in out
    report = json.loads((tmp_path / "incremental.json").read_text())
    assert report["runs"]["scratch"]["reach"] is not None and report["init_from"]["items"]["new"] == 2

    # --resume keeps the finished runs and finishes the unfinished one from its checkpoints
    finished = {name: (tmp_path / name / "results.json").stat().st_mtime_ns for name in ("earlier", "scratch")}
    (tmp_path / "warm" / "results.json").unlink()
    again = run_benchmark("incremental.py", "--dataset", str(planted_dataset), "--k", "5", "--out", str(tmp_path),
                          "--resume", "--warm", "pretrain.warmup_epochs=0", "finetune.epochs=1", "--", *tiny,
                          timeout=600)
    assert {name: (tmp_path / name / "results.json").stat().st_mtime_ns for name in finished} == finished
    assert {row[0]: row for row in table_rows(again) if len(row) == 7 and row[0] != "run"} == rows


@pytest.mark.slow
def test_table_sharding_benchmark_counts_both_engines_bytes():
    """A toy catalogue on 2 ranks: every step moves fewer bytes with row-sharded tables than under ZeRO-3,
    and ZeRO-3's measured reduce-scatter is the arithmetic's (the trained pair's fp32 gradient, (R−1)/R
    of it reaching each rank; none when scoring)."""
    out = run_benchmark("table_sharding.py", "--shapes", "100:300", "--ranks", "2", timeout=900)
    rows = [row for row in table_rows(out) if row[0].replace(",", "").isdigit()]
    by_engine = {engine: {row[3]: row for row in rows if row[4] == engine} for engine in ("zero3", "rows")}
    assert all(sorted(steps) == ["collab", "content", "rec", "score"] for steps in by_engine.values())

    def kib(cell: str) -> float:
        return float(cell.replace(",", ""))

    for step, zero3 in by_engine["zero3"].items():
        assert kib(by_engine["rows"][step][9]) < kib(zero3[9])
        assert kib(zero3[6]) == kib(zero3[10].split(" + ")[1])


@pytest.mark.slow
def test_memory_plan_benchmark_sets_the_plan_beside_the_measured_memory(planted_dataset, tiny_llama, tmp_path):
    from conftest import SMALL, tiny_overrides

    small = [f"{key}={value}" for key, value in SMALL.items()]
    out = run_benchmark("memory_plan.py", "--recipe", "", *tiny_overrides(planted_dataset, tiny_llama, tmp_path / "run"),
                        *small, timeout=600)
    figures = json.loads(out[out.rindex("\n{\n") + 1:])  # the JSON printed last
    assert figures["plan_peak_moment"] in ("build", "step", "save", "baselines")
    assert list(figures["measured_peak_by_unit_gib"]) == ["warmup-r000-e000", "lstep-r000-e000", "cstep-r000-e000",
                                                          "finetune-r000-e000"]
    assert figures["plan_peak_gib"] > 0 and figures["measured_peak_gib"] > 0 and figures["rss_before_build_gib"] > 0
    assert "per rank: engine plain × 1 rank(s) on CPU" in out and "host peak:" in out


def test_llama7b_shape_cuts_smollm2s_tokenizer_to_its_first_ids():
    """SmolLM2's byte-level BPE cut to its first 1,000 ids (benchmarks/llama7b_shape.py) is a tokenizer of
    1,000 tokens: a sentence encodes to ids below 1,000 only, more of them than uncut, and decodes back."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from data_prep.assets import resolve_backbone

    whole = json.loads((Path(resolve_backbone("smollm2-135m")) / "tokenizer.json").read_text())
    cut = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(
        json.dumps(benchmark_module("llama7b_shape").trimmed_tokenizer(whole, 1000))))
    uncut = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(whole)))
    text = "The biography of a retired teacher who loves old films, 1995!"
    ids = cut(text)["input_ids"]
    assert len(cut) == 1000 and max(ids) < 1000 and len(ids) > len(uncut(text)["input_ids"])
    assert cut.decode(ids) == text


@pytest.mark.slow
def test_llama7b_shape_benchmark_runs_a_tiny_shape():
    """One 64-wide layer on 2 CPU ranks: the backbone built has the P the arithmetic counts, every rank
    reports each step kind, and its reduce-scatter is the arithmetic's to the byte: the trained pair's
    bf16 gradient, E/2 elements, half of it reaching each rank."""
    out = run_benchmark("llama7b_shape.py", "--layers", "1", "--hidden", "64", "--intermediate", "128", "--heads", "4",
                        "--vocab", "2000", "--steps", "1", timeout=900)
    assert "backbone P = 297,152 elements (measured 297,152), torch.bfloat16" in out
    steps = [row for row in table_rows(out) if len(row) == 12 and row[0].isdigit()]
    assert sorted((row[0], row[1]) for row in steps) == sorted(
        (rank, step) for rank in "01" for step in ("L-step", "C-step", "finetuning"))
    folder = Path(out.split("figures as JSON: ")[1].split()[0])
    table_elements = 2 * (943 + 1682) * 64
    for rank in (0, 1):
        figures = json.loads((folder / f"figures.rank{rank}.json").read_text())
        for task in ("collab", "content", "rec"):
            assert figures[task]["received_per_step"]["reduce_scatter"] == table_elements / 2 * 2 / 2
            assert figures[task]["peak_mib"] > figures["rss_before_build_mib"]
