"""Training-step cost against catalogue size: step time vs its FLOP floor, peak memory vs tables +
optimizer state, for the collaborative (L-step) and the finetuning step on synthetic catalogues.

    .venv/bin/python benchmarks/catalogue_scale.py                      # every size, fused and plain paths
    .venv/bin/python benchmarks/catalogue_scale.py --sizes tiny:10000 --variants fused --steps 2

A size is BACKBONE:ITEMS with 100,000 users (--users). Each (size, variant, step) runs in its own
process (for its own peak RSS; "built" is the resident memory before the first step), one after
another; run nothing else meanwhile. Fixed batches: the L-step has 8 documents of 64 items (512
main-part tokens, 522 in all; `--collab-docs`); the finetuning step 32 users (`--rec-users`) with
48 prompt items and 12 target items each. The floor of a step = backbone FLOPs (forward + input-gradient
backward: `common.backbone_flops_per_token`) at the rate of an [tokens, K] @ [K, 4K] product in the
backbone dtype + 6·K·J FLOPs per item-softmax row (main-part token or user) at the rate of an
[512, K] @ [K, 4096] fp32 product, both measured in the worker process just before and just after
the timed steps; the floor uses the best rate any worker of the invocation measured for the same
shapes (this VM's bf16 rate has two modes 3x apart, so one worker's measurements may all be slow).
The table shows those best rates; the JSON keeps each worker's own (`gflops_before_after`). s/step
is the median of the timed steps. Both products are also timed briefly between every two timed
steps: "ratio at adjacent rates" is the median over steps of step time / the floor at the mean of
the rates measured just before and just after that step (the hardware's rate at that moment, so
the mode the VM was in cancels out; the JSON keeps each step's time and rates). "Adam" is one
optimizer step over the trained tables alone (memory-bound, not part of the FLOP floor); where
"Adam / floor" exceeds 0.3, that pass alone keeps the step above 1.3x its floor.

Variants: "fused" is the shipped path (fused item softmax, fused Adam, table gradients in kept
buffers, fused RMSNorm); "plain" is the reference it replaced (whole [rows, J] logits through
autograd, per-tensor Adam, autograd's fresh table gradients, transformers' RMSNorm modules).
`--compare WHAT` also times the fused path's steps with one part of it undone, the two interleaved
in the same worker: `kept-gradients` against autograd's fresh table gradients
(cllm4rec/table_gradients.py), `fused-norm` against transformers' RMSNorm modules
(cllm4rec/rms_norm.py). `--compile` runs the backbone body through torch.compile (model.compile; an
untimed first step compiles), `--activation-checkpointing` recomputes each backbone layer in
backward (model.activation_checkpointing).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from common import REPO, backbone_ref, gib, probed_steps

DEFAULT_SIZES = ["tiny:10000", "tiny:100000", "tiny:1000000", "smollm2-135m:10000", "smollm2-135m:100000"]
COLLAB_ITEMS, REC_PROMPT, REC_TARGETS = 64, 48, 12  # items per L-step document; prompt and target items per user


def plain_item_softmax_nll_sum(hidden, table, rows, items, block_elements=None, sink=None):
    """The reference the fused kernel replaced: whole [M, J] logits, log-softmax and autograd."""
    import torch

    logits = hidden.float() @ table.float().t()
    return -torch.log_softmax(logits, dim=1)[rows, items].sum()


def current_rss_bytes() -> int:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


def worker(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    import cllm4rec.model
    from cllm4rec.backbone import load_backbone
    from cllm4rec.model import CLLM4Rec
    from cllm4rec.rms_norm import LLAMA_STYLE_RMS_NORMS, fuse_rms_norms
    from cllm4rec.templates import Items, interaction_prompt, recommendation_prompt
    from cllm4rec.tokenization import Document, IdTokenizer
    from cllm4rec.table_gradients import TableGradients
    from common import backbone_flops_per_token, matmul_rate, product_rate_probe, seconds
    from data_prep.assets import resolve_backbone
    from trainer.build import pick_attention, pick_dtype
    from trainer.data import pad_documents
    from trainer.engine import PlainEngine, SkipInactiveGroups, peak_rss_mib

    torch.manual_seed(0)
    dtype = pick_dtype(args.dtype, torch.device("cpu"))
    backbone, hf_tok = load_backbone(resolve_backbone(args.backbone, progress=False), dtype=dtype,
                                     attention=pick_attention("auto", torch.device("cpu")))
    norms = {"transformers": [(n, m) for n, m in backbone.named_modules() if type(m).__name__ in LLAMA_STYLE_RMS_NORMS]}
    if args.variant != "plain":  # model.fused_norm, as trainer/build.py does by default
        fuse_rms_norms(backbone)
    norms["fused"] = [(n, backbone.get_submodule(n)) for n, _ in norms["transformers"]]
    model = CLLM4Rec(backbone, args.users, args.items, init_std=0.02, seed=0)
    tok = IdTokenizer(hf_tok, model.vocab_rows, args.users, args.items)
    if args.activation_checkpointing:
        model.enable_activation_checkpointing()
    if args.compile:
        model.compile_backbone()
    engine = PlainEngine(model, 1e-3, 1e-3, kept_gradients=args.variant != "plain")
    if args.variant == "plain":
        cllm4rec.model.item_softmax_nll_sum = plain_item_softmax_nll_sum
        per_tensor = type("PerTensorAdam", (SkipInactiveGroups, torch.optim.Adam), {})
        engine.optimizer = per_tensor({"collab": model.table_parameters("collab"),
                                       "content": model.table_parameters("content")}, 1e-3, foreach=False)
    rng = np.random.default_rng(0)
    users = rng.choice(args.users, size=max(args.collab_docs, args.rec_users), replace=False)
    collab = pad_documents(tok.encode_documents(
        [(interaction_prompt(int(u)), [Items(rng.choice(args.items, COLLAB_ITEMS, replace=False))]) for u in users[:args.collab_docs]]))
    prompts = tok.encode_segments([recommendation_prompt(int(u), rng.choice(args.items, REC_PROMPT, replace=False)) for u in users[:args.rec_users]])
    rec = pad_documents([Document(x, len(x)) for x in prompts])
    rec["target_rows"] = torch.arange(args.rec_users).repeat_interleave(REC_TARGETS)
    rec["target_items"] = torch.tensor(rng.choice(args.items, args.rec_users * REC_TARGETS), dtype=torch.long)

    built_rss = current_rss_bytes()  # runtime, backbone, tables and batches, before any step
    decoder, dim = model.decoder, model.dim
    out = {"backbone": args.backbone, "items": args.items, "users": args.users,
           "variant": args.variant + ("+compile" if args.compile else "") + ("+ckpt" if args.activation_checkpointing else ""),
           "dtype": str(dtype).removeprefix("torch."), "dim": dim, "steps": {}}
    for task, batch, rows in (("collab", collab, args.collab_docs * COLLAB_ITEMS), ("rec", rec, args.rec_users)):
        if task != args.task:
            continue
        tokens, seq_len = int(batch["lengths"].sum()), int(batch["input_ids"].shape[1])
        backbone_flops = backbone_flops_per_token(decoder, seq_len) * tokens
        head_flops = 6 * dim * args.items * rows
        engine.train_step(task, dict(batch), task)  # untimed (a compiled backbone compiles here)
        def backbone_and_head_rates() -> tuple[float, float]:
            return matmul_rate(tokens, dim, 4 * dim, dtype), matmul_rate(512, dim, 4096, torch.float32)

        def step_with(sink: TableGradients | None, norm: str = "fused") -> Callable[[], object]:
            def run_step() -> None:
                model.table_gradients = sink
                for name, module in norms[norm]:
                    backbone.set_submodule(name, module)
                engine.train_step(task, dict(batch), task)
            return run_step

        probes = product_rate_probe(tokens, dim, 4 * dim, dtype), product_rate_probe(512, dim, 4096, torch.float32)

        def probe() -> tuple[float, float]:  # a quick look at both rates between two timed steps
            return probes[0](), probes[1]()

        rates = [backbone_and_head_rates()]
        undone = {"kept-gradients": step_with(None), "fused-norm": step_with(model.table_gradients, "transformers")}
        calls = {"shipped": step_with(model.table_gradients)}
        if args.compare and args.variant == "fused":  # the same steps with one part undone, interleaved
            calls["undone"] = undone[args.compare]
        timed = probed_steps(calls, args.steps, probe)
        rates.append(backbone_and_head_rates())
        backbone_rate, head_rate = (max(r) for r in zip(*rates))  # this VM's rate drifts: the better one
        floor = backbone_flops / backbone_rate + head_flops / head_rate
        step = statistics.median(t for t, _, _ in timed["shipped"])
        undone_seconds = statistics.median(t for t, _, _ in timed["undone"]) if "undone" in timed else None
        own_ratio = statistics.median(t / (backbone_flops / b + head_flops / h) for t, b, h in timed["shipped"])
        adam = seconds(lambda: engine.optimizer.step(), 2)
        out["steps"][task] = {"seconds": step, "floor_seconds": floor, "ratio": step / floor, "adam_seconds": adam,
                              "ratio_at_adjacent_rates": own_ratio,
                              "steps_seconds_and_adjacent_gflops": [[t, b / 1e9, h / 1e9] for t, b, h in timed["shipped"]],
                              "undone_seconds": undone_seconds,
                              "tokens": tokens, "softmax_rows": rows, "backbone_gflops": backbone_rate / 1e9,
                              "head_gflops": head_rate / 1e9, "gflops_before_after": [[r / 1e9 for r in pair] for pair in rates],
                              "backbone_tflop": backbone_flops / 1e12, "head_tflop": head_flops / 1e12}
    tables = sum(t.numel() * t.element_size() for t in model.id_tables().values())
    state = sum(v.numel() * v.element_size() for s in engine.optimizer.state.values() for v in s.values()
                if torch.is_tensor(v))
    out.update(table_bytes=tables, optimizer_state_bytes=state, peak_rss_bytes=peak_rss_mib() * 2**20,
               built_rss_bytes=built_rss)
    return out


def run(size: str, variant: str, task: str, args: argparse.Namespace, folder: Path) -> dict:
    name, items = size.split(":")
    out = folder / f"{name}-{items}-{variant}-{task}.json"
    command = [sys.executable, __file__, "--worker", "--backbone", backbone_ref(name, folder), "--items", items,
               "--users", str(args.users), "--collab-docs", str(args.collab_docs),
               "--rec-users", str(args.rec_users), "--variant", variant, "--task", task, "--steps", str(args.steps),
               "--dtype", args.dtype, "--out", str(out), *(["--compile"] if args.compile else []),
               *(["--compare", args.compare] if args.compare else []),
               *(["--activation-checkpointing"] if args.activation_checkpointing else [])]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, timeout=3600)
    result = json.loads(out.read_text())
    result["name"], result["wall_s"] = name, time.perf_counter() - started
    return result


def floors_at_best_rates(results: list[dict]) -> None:
    """Recompute every step's floor at the best rates that any worker of this invocation measured for
    the same product shapes (the bf16 rate of this VM has two modes 3x apart, stable for minutes, so
    one worker's own measurements can both fall in the slow one). Keeps `own_floor_seconds`."""
    def shapes(r: dict, s: dict) -> tuple[tuple, tuple]:  # the backbone's and the head's product
        return (r["backbone"], r["dtype"], s["tokens"]), (r["backbone"], r["dim"])

    steps = [(r, s) for r in results for s in r["steps"].values()]
    best: dict[tuple, float] = {}
    for r, s in steps:
        for shape, rate in zip(shapes(r, s), (s["backbone_gflops"], s["head_gflops"])):
            best[shape] = max(best.get(shape, 0.0), rate)
    for r, s in steps:
        backbone_shape, head_shape = shapes(r, s)
        s["own_floor_seconds"] = s["floor_seconds"]
        s["backbone_gflops"], s["head_gflops"] = best[backbone_shape], best[head_shape]
        s["floor_seconds"] = s["backbone_tflop"] * 1e3 / s["backbone_gflops"] + s["head_tflop"] * 1e3 / s["head_gflops"]
        s["ratio"] = s["seconds"] / s["floor_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="BACKBONE:ITEMS (backbone 'tiny' or a reference)")
    parser.add_argument("--variants", nargs="+", default=["fused", "plain"], choices=["fused", "plain"])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per task (after one untimed)")
    parser.add_argument("--collab-docs", type=int, default=8, help="documents of 64 items in the L-step batch")
    parser.add_argument("--rec-users", type=int, default=32, help="users (48 prompt + 12 target items) in the finetuning batch")
    parser.add_argument("--dtype", default="auto", help="backbone dtype: auto (bf16 where the CPU has it), float32, bfloat16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone body (model.compile)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute backbone layers in backward (model.activation_checkpointing)")
    parser.add_argument("--compare", choices=["kept-gradients", "fused-norm"],
                        help="fused path: also time each step with this part undone (autograd's fresh table gradients; "
                             "transformers' RMSNorm modules), interleaved in the same worker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        Path(args.out).write_text(json.dumps(worker(args), indent=2))
        return
    folder = Path(tempfile.mkdtemp(prefix="catalogue-bench-"))
    results = [run(size, variant, task, args, folder) for size in args.sizes for variant in args.variants
               for task in ("collab", "rec")]
    floors_at_best_rates(results)
    print(f"\n{args.users:,} users; L-step {args.collab_docs}x{COLLAB_ITEMS} items, finetuning {args.rec_users} users; "
          f"{args.steps} timed steps; {os.cpu_count()} CPU threads\n")
    print("| backbone (dtype) | items | path | step | s/step | FLOP floor (s) | ratio | ratio at adjacent rates | Adam (s) | "
          "Adam / floor | head fp32 GFLOP/s | backbone GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for task, s in r["steps"].items():
            print(f"| {r['name']} ({r['dtype']}) | {r['items']:,} | {r['variant']} | {task} | {s['seconds']:.3f} | "
                  f"{s['floor_seconds']:.3f} | {s['ratio']:.2f} | {s['ratio_at_adjacent_rates']:.2f} | {s['adam_seconds']:.3f} | "
                  f"{s['adam_seconds'] / s['floor_seconds']:.2f} | {s['head_gflops']:.0f} | {s['backbone_gflops']:.0f} |")
    compared = [(r, task, s) for r in results for task, s in r["steps"].items() if s["undone_seconds"]]
    if compared:
        print(f"\nThe shipped step vs the same with {args.compare} undone, same worker, steps interleaved:\n")
        print(f"| backbone | items | step | shipped s/step | without {args.compare} s/step | shipped / without |")
        print("|---|---|---|---|---|---|")
        for r, task, s in compared:
            print(f"| {r['name']} | {r['items']:,} | {task} | {s['seconds']:.3f} | {s['undone_seconds']:.3f} | "
                  f"{s['seconds'] / s['undone_seconds']:.2f} |")
    print("\n| backbone | items | path | step | tables (GiB) | Adam state (GiB) | built (GiB) | peak RSS (GiB) | "
          "tables + state + 2 GiB | within |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        bound = r["table_bytes"] + r["optimizer_state_bytes"] + 2 * 2**30
        print(f"| {r['name']} | {r['items']:,} | {r['variant']} | {next(iter(r['steps']))} | {gib(r['table_bytes'])} | "
              f"{gib(r['optimizer_state_bytes'])} | {gib(r['built_rss_bytes'])} | {gib(r['peak_rss_bytes'])} | "
              f"{gib(bound)} | {'yes' if r['peak_rss_bytes'] <= bound else 'NO'} |")
    print(f"\nfigures as JSON: {folder}")


if __name__ == "__main__":
    main()
