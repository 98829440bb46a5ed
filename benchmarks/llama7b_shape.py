"""The LLaMA-2-7B shape under the ZeRO-3 engine on CPU ranks: the backbone (random bf16 weights; no 7B
checkpoint is reachable) and ML-100K's four ID tables at K = 4096 built straight into their partitions,
then a few L-, C- and finetuning steps on short batches. Prints per rank the peak RSS of the build and
of each step kind, the seconds per step, and the bytes each rank received through all-gathers and
reduce-scatters, beside what docs/cluster.md's arithmetic (sections 1, 2 and 5) predicts for the same
shapes.

    .venv/bin/python benchmarks/llama7b_shape.py                 # the real shape: 32 layers, K = 4096, V = 32,000
    .venv/bin/python benchmarks/llama7b_shape.py --layers 2 --hidden 1024 --intermediate 2752 --heads 8

The backbone folder holds only a LlamaConfig and a tokenizer: SmolLM2's byte-level BPE cut to its first
`--vocab` ids (its merges are numbered in merge order, so the first V ids with the merges that make them
are a tokenizer of V tokens). `model.random_init=true` makes transformers create the backbone with
`from_config` under `deepspeed.zero.Init` (trainer/zero_build.py): random weights drawn module by module
straight into the partitions. The run is the `quick` recipe's ZeRO-3 engine (`distributed.ds_config`,
default `zero3_bf16`, with DeepSpeed's comms logger on) at a global batch of `--batch` documents, each
capped at `--max-items` items and `--max-main-tokens` words. Each rank runs one untimed and `--steps`
timed steps of each kind, one OpenMP thread each.

Peak RSS is VmHWM, reset (`/proc/self/clear_refs` ← 5) at the start of the build and of each step kind.
Each rank also writes its phase and VmHWM to a file every second and raises its own `oom_score_adj` to
1000, so a run that does not fit loses a rank of this benchmark, not another process, and the last
sampled peak is still reported. On CPU ranks `zero3_offload` moves nothing: its "offloaded" partitions
are host memory, as every partition already is.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from build_rss import end_worker, run_on_cpu_ranks, status_mib
from common import matmul_rate
from table_sharding import received_by_deepspeed
from zero3_cpu import comms_config

MIB = 2**20
ITEM_HEAD_BOUND = 2**29  # bytes of stored exps the fused item softmax keeps at once (docs/cluster.md, 1.6)
TABLE_STATE = 16  # bytes per trainable element under ZeRO-3 (docs/cluster.md, 1.3); +4 with CPU Adam (section 3, B)


@dataclass(frozen=True)
class Shape:
    """A LLaMA-2 decoder without grouped-query attention and with an untied LM head (defaults: LLaMA-2-7B)."""

    layers: int = 32
    hidden: int = 4096
    intermediate: int = 11008
    heads: int = 32
    vocab: int = 32000

    def layer_matrices(self) -> int:
        """Elements of one layer's matrices: attention 4K², SwiGLU MLP 3·K·F."""
        return 4 * self.hidden**2 + 3 * self.hidden * self.intermediate

    def params(self) -> int:
        """P (docs/cluster.md, section 0): L·(4K² + 3KF + 2K) + 2VK + K."""
        k = self.hidden
        return self.layers * (self.layer_matrices() + 2 * k) + 2 * self.vocab * k + k


def trimmed_tokenizer(tokenizer_json: dict, vocab: int) -> dict:
    """A byte-level BPE tokenizer.json cut to its ids < `vocab`: the merges whose product is kept, and the
    added tokens below `vocab`."""
    model = tokenizer_json["model"]
    kept = {token: i for token, i in model["vocab"].items() if i < vocab}
    merges = [m for m in model["merges"] if "".join(m if isinstance(m, list) else m.split(" ")) in kept]
    added = [t for t in tokenizer_json["added_tokens"] if t["id"] < vocab]
    return {**tokenizer_json, "model": {**model, "vocab": kept, "merges": merges}, "added_tokens": added}


def write_backbone(folder: Path, shape: Shape) -> Path:
    """A model folder of `shape`'s LlamaConfig and SmolLM2's tokenizer cut to `shape.vocab` ids (no weights)."""
    from transformers import AutoTokenizer, LlamaConfig

    from data_prep.assets import resolve_backbone

    smollm2 = Path(resolve_backbone("smollm2-135m"))
    folder.mkdir(parents=True, exist_ok=True)
    cut = trimmed_tokenizer(json.loads((smollm2 / "tokenizer.json").read_text()), shape.vocab)
    (folder / "tokenizer.json").write_text(json.dumps(cut))
    shutil.copy(smollm2 / "tokenizer_config.json", folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if len(tokenizer) != shape.vocab:
        raise ValueError(f"SmolLM2's tokenizer cut to {shape.vocab} ids has {len(tokenizer)} tokens")
    LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
                max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id).save_pretrained(folder)
    return folder


class MemoryTrace:
    """This rank's peak RSS (VmHWM) per phase. Every second a thread writes the current phase, its peak so
    far and the finished phases' peaks to `path` (temp + rename), which outlives a rank killed mid-phase."""

    def __init__(self, path: Path):
        self.path, self.phase, self.peaks = path, "", {}
        self.lock = threading.Lock()
        threading.Thread(target=self._write_every_second, daemon=True).start()

    def enter(self, phase: str) -> float:
        """End the current phase (its peak RSS in MiB is returned and kept) and start `phase` at this RSS."""
        with self.lock:
            peak = status_mib("VmHWM")
            if self.phase:
                self.peaks[self.phase] = peak
            Path("/proc/self/clear_refs").write_text("5")
            self.phase = phase
            self._write()
        return peak

    def _write(self) -> None:
        write_json(self.path, {"phase": self.phase, "phase_peak_mib": status_mib("VmHWM"), "peaks_mib": self.peaks})

    def _write_every_second(self) -> None:
        while True:
            time.sleep(1.0)
            with self.lock:
                self._write()


def write_json(path: Path, value: object) -> None:
    """`value` as JSON in `path`, whole or not at all (temp + rename)."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(value, indent=1))
    temp.replace(path)


def batch_figures(task: str, batch: dict) -> dict[str, int]:
    """A batch's documents, padded length, main-part (scored) tokens, and the rows the item head scores
    (L-step: every main-part token; finetuning: one per user; C-step: none, its head is the LM head)."""
    ids = batch["input_ids"]
    main = int((batch["lengths"] - batch["n_prompt"]).sum())
    return {"docs": ids.shape[0], "length": ids.shape[1], "main_tokens": main,
            "head_rows": {"collab": main, "rec": ids.shape[0], "content": 0}[task]}


def worker(args: argparse.Namespace) -> None:
    """Runs on every rank under the launcher; each rank writes its figures to `<out>.rank<r>.json`."""
    rank = int(os.environ["RANK"])
    Path("/proc/self/oom_score_adj").write_text("1000")  # if memory runs out, this rank goes first
    import deepspeed.comm as ds_comm

    from trainer.config_loading import load_config
    from trainer.data import epoch_rng
    from trainer.pipeline import TrainingRun
    from trainer.schedule import PLANNED_STEPS

    trace = MemoryTrace(Path(f"{args.out}.rank{rank}.trace"))
    figures: dict = {"rank": rank, "rss_before_build_mib": status_mib("VmRSS")}
    trace.enter("build")
    start = time.perf_counter()
    run = TrainingRun(load_config("quick", args.overrides), progress=False)
    figures["build_seconds"] = time.perf_counter() - start
    figures["build_peak_mib"] = trace.enter("matmul rate")
    figures["rss_after_build_mib"] = status_mib("VmRSS")
    engine, model, dist = run.engine, run.parts.model, run.dist
    dtype = next(model.backbone.parameters()).dtype
    figures["matmul_flops"] = matmul_rate(64, model.dim, model.backbone.config.intermediate_size, dtype, 3, 3)
    for step in PLANNED_STEPS:
        task = step.task.value
        trace.enter(task)
        stream, _ = run.batches(step, epoch_rng(0, "bench", task))
        batches = list(itertools.islice(stream, args.steps + 1))
        engine.train_step(step, batches[0])  # untimed: first-step allocations (Adam state)
        ds_comm.reset_log()
        start = time.perf_counter()
        for batch in batches[1:]:
            engine.train_step(step, batch)
        seconds = time.perf_counter() - start
        received = received_by_deepspeed(ds_comm, dist.world_size)
        sizes = [batch_figures(task, b) for b in batches]
        figures[task] = {"seconds_per_step": seconds / args.steps,
                         "received_per_step": {kind: v / args.steps for kind, v in received.items()},
                         "largest": {key: max(s[key] for s in sizes) for key in ("docs", "length", "head_rows")},
                         "timed": sizes[1:]}
    trace.enter("done")
    for task, peak in trace.peaks.items():
        if task in figures:
            figures[task]["peak_mib"] = peak
    figures.update(users=model.n_users, items=model.n_items, dim=model.dim, world_size=dist.world_size,
                   backbone_elements=sum(p.ds_numel for p in model.backbone.parameters()),
                   checkpointing=run.config.model.activation_checkpointing, dtype=str(dtype))
    write_json(Path(f"{args.out}.rank{rank}.json"), figures)
    end_worker()


@dataclass(frozen=True)
class Plan:
    """What a run holds, for docs/cluster.md's arithmetic: shapes, ranks, element size, DeepSpeed limits."""

    shape: Shape
    users: int
    items: int
    ranks: int
    element_bytes: int  # 2 under bf16, 4 in fp32
    max_live: int  # stage3_max_live_parameters
    cpu_adam: bool  # offload_optimizer: DeepSpeedCPUAdam's fp32 gradient buffer, 4 B more per element
    checkpointing: bool

    @property
    def table_elements(self) -> int:
        """E = (2N + 2J)·K."""
        return 2 * (self.users + self.items) * self.shape.hidden

    def held_after_build(self) -> float:
        """Bytes per rank once built: the backbone and table partitions, and the tables' fp32 masters (bf16)."""
        masters = 4 if self.element_bytes == 2 else 0
        return (self.element_bytes * self.shape.params() + (self.element_bytes + masters) * self.table_elements) / self.ranks

    def step_memory(self, docs: int, length: int, head_rows: int) -> dict[str, float]:
        """Bytes per rank in a step of `docs` documents of `length` tokens on this rank (docs/cluster.md,
        section 5), `head_rows` positions scored by the item head."""
        s, k, shape, e = length, self.shape.hidden, self.shape, self.element_bytes
        layer = s * docs * k * (34 + 5 * shape.heads * s / k) * e / 2  # 16-bit activations, scaled to the dtype
        activations = shape.layers * 2 * s * docs * k * e / 2 + layer if self.checkpointing else shape.layers * layer
        return {
            "backbone partition": e * shape.params() / self.ranks,
            "backbone gathered (bound)": e * min(shape.params(), self.max_live),
            "table state": (TABLE_STATE + 4 * self.cpu_adam) * self.table_elements / self.ranks,
            "tables gathered": e * self.table_elements,
            "dense table gradient + copy": 2 * e * max(self.users, self.items) * k,
            "activations": activations,
            "item head": min(ITEM_HEAD_BOUND, 4 * head_rows * self.items),
        }

    def received_per_step(self) -> dict[str, float]:
        """Bytes a rank receives per training step (docs/cluster.md, 2.1 and 5): the backbone and all four
        tables all-gathered in the forward and again in the backward (a third backbone gather with
        checkpointing), the trained pair's dense gradient reduce-scattered once; (R−1)/R of each."""
        share, e = (self.ranks - 1) / self.ranks, self.element_bytes
        backbone_gathers = 3 if self.checkpointing else 2
        return {"all_gather": share * e * (backbone_gathers * self.shape.params() + 2 * self.table_elements),
                "reduce_scatter": share * e * self.table_elements / 2}

    def flops(self, task: str, batch: dict[str, int]) -> float:
        """FLOPs of one step on this rank's batch (docs/cluster.md, 2.3): 2 forward + 2 input-gradient
        backward per matrix element and token (the input embedding is a lookup), plus the head: the
        item softmax's 6·K·J per scored row, the content LM head's 4·V·K per main-part token."""
        k, tokens = self.shape.hidden, batch["docs"] * batch["length"]
        backbone = 4 * self.shape.layers * self.shape.layer_matrices() * tokens
        head = 4 * k * self.shape.vocab * batch["main_tokens"] if task == "content" else 6 * k * self.items * batch["head_rows"]
        return backbone + head


def plan_of(shape: Shape, ranks: int, ds_config: dict, rank: dict) -> Plan:
    """The Plan of a run: `shape`, the catalogue a rank reported, the precision and limits of its DeepSpeed config."""
    zero = ds_config["zero_optimization"]
    return Plan(shape, rank["users"], rank["items"], ranks, 2 if ds_config.get("bf16", {}).get("enabled") else 4,
                zero["stage3_max_live_parameters"], "offload_optimizer" in zero, rank["checkpointing"])


def mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


TASKS = {"collab": "L-step", "content": "C-step", "rec": "finetuning"}


def report(shape: Shape, plan: Plan, ranks: list[dict]) -> None:
    """The tables: the build per rank, then each step kind per rank, measured beside predicted."""
    first = ranks[0]
    print(f"\nbackbone P = {shape.params():,} elements (measured {first['backbone_elements']:,}), {first['dtype']}; "
          f"tables {plan.users:,} users + {plan.items:,} items, K = {first['dim']}: E = {plan.table_elements:,}; "
          f"{plan.ranks} CPU ranks, {len(first['collab']['timed'])} timed steps per kind\n")
    print("| rank | build (s) | RSS before build (MiB) | build peak RSS (MiB) | RSS after build (MiB) | "
          "predicted after build: RSS before + partitions (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in ranks:
        print(f"| {r['rank']} | {r['build_seconds']:.0f} | {r['rss_before_build_mib']:,.0f} | {r['build_peak_mib']:,.0f} | "
              f"{r['rss_after_build_mib']:,.0f} | {r['rss_before_build_mib'] + plan.held_after_build() / MIB:,.0f} |")
    print("\n| rank | step | docs × length (largest) | s/step | compute floor s/step (docs 2.3 FLOPs at the measured "
          "matmul rate) | step peak RSS (MiB) | predicted: RSS before build + section 5 (MiB) | "
          "all-gather received MiB/step | predicted | reduce-scatter received MiB/step | predicted | other MiB/step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    traffic = plan.received_per_step()
    for r in ranks:
        for task, label in TASKS.items():
            fig, largest = r[task], r[task]["largest"]
            floor = sum(plan.flops(task, b) for b in fig["timed"]) / len(fig["timed"]) / r["matmul_flops"]
            memory = plan.step_memory(largest["docs"], largest["length"], largest["head_rows"])
            got = fig["received_per_step"]
            other = sum(v for kind, v in got.items() if kind not in traffic)
            print(f"| {r['rank']} | {label} | {largest['docs']} × {largest['length']} | {fig['seconds_per_step']:.2f} | "
                  f"{floor:.2f} | {fig['peak_mib']:,.0f} | {r['rss_before_build_mib'] + sum(memory.values()) / MIB:,.0f} | "
                  f"{mib(got.get('all_gather', 0))} | {mib(traffic['all_gather'])} | "
                  f"{mib(got.get('reduce_scatter', 0))} | {mib(traffic['reduce_scatter'])} | {mib(other)} |")
    largest = first["collab"]["largest"]
    print("\npredicted step memory per rank, by part (MiB; the L-step of rank 0):")
    for part, value in plan.step_memory(largest["docs"], largest["length"], largest["head_rows"]).items():
        print(f"  {part}: {mib(value)}")


def report_failure(out: Path, ranks: int, error: RuntimeError) -> None:
    """What each rank's trace held when the run failed: its phase and the peak RSS sampled in it."""
    print(str(error)[-2000:], file=sys.stderr)
    print("\nthe run did not finish; last sampled memory per rank:")
    for rank in range(ranks):
        trace = Path(f"{out}.rank{rank}.trace")
        if not trace.is_file():
            print(f"  rank {rank}: no trace (it stopped before the build began)")
            continue
        t = json.loads(trace.read_text())
        done = ", ".join(f"{phase} {peak:,.0f}" for phase, peak in t["peaks_mib"].items())
        print(f"  rank {rank}: in phase {t['phase']!r}, peak RSS {t['phase_peak_mib']:,.0f} MiB so far; "
              f"finished phases (peak MiB): {done or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in asdict(Shape()).items():
        parser.add_argument(f"--{name}", type=int, default=default, help=f"backbone {name} (default {default}: LLaMA-2-7B)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per kind, after one untimed")
    parser.add_argument("--batch", type=int, default=2, help="global batch, in documents")
    parser.add_argument("--max-items", type=int, default=16, help="items per interaction document and prompt")
    parser.add_argument("--max-main-tokens", type=int, default=16, help="words per content document")
    parser.add_argument("--ds-config", default="zero3_bf16", choices=["zero3_bf16", "zero3_offload", "zero3_cpu"])
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds before the run is stopped")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="further config overrides (key=value), e.g. "
                        "model.activation_checkpointing=true")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    shape = Shape(args.layers, args.hidden, args.intermediate, args.heads, args.vocab)
    folder = Path(tempfile.mkdtemp(prefix="llama7b-shape-"))
    ds_config = comms_config(folder, args.ds_config)
    overrides = [f"model.backbone={write_backbone(folder / 'backbone', shape)}", "model.random_init=true",
                 "distributed.engine=deepspeed", f"distributed.ds_config={ds_config}", "tracking.mlflow=false",
                 f"output_dir={folder / 'run'}", f"pretrain.batch_size={args.batch}", f"finetune.batch_size={args.batch}",
                 f"data.max_items={args.max_items}", f"data.max_main_tokens={args.max_main_tokens}", *args.overrides]
    out = folder / "figures"
    print(f"{shape}, {args.ranks} CPU ranks, {args.ds_config}; worker log: {out.with_suffix('.log')}", flush=True)
    try:
        run_on_cpu_ranks([__file__, "--worker", "--out", str(out), "--steps", str(args.steps), *overrides],
                         args.ranks, out.with_suffix(".log"), args.timeout)
    except RuntimeError as error:
        report_failure(out, args.ranks, error)
        sys.exit(1)
    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(args.ranks)]
    report(shape, plan_of(shape, args.ranks, json.loads(ds_config.read_text()), ranks[0]), ranks)
    print(f"\nfigures as JSON: {folder}")


if __name__ == "__main__":
    main()
