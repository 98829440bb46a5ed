"""Training-step cost against catalogue size: step time vs its FLOP floor, peak memory vs tables +
optimizer state, for the collaborative (L-step) and the finetuning step on synthetic catalogues.

    .venv/bin/python benchmarks/catalogue_scale.py                      # every size, fused and plain paths
    .venv/bin/python benchmarks/catalogue_scale.py --sizes tiny:10000 --variants fused --steps 2

A size is BACKBONE:ITEMS with 100,000 users (--users). Each (size, variant, step) runs in its own
process (for its own peak RSS; "built" is the resident memory before the first step), one after
another; run nothing else meanwhile. Fixed batches: the L-step has 8 documents of 64 items (512
main-part tokens, 522 in all; `--collab-docs`); the finetuning step 32 users (`--rec-users`) with
48 prompt items and 12 target items each. The floor of a step is the time of its three kinds of
multiply-adds, each at the rate of a reference product in its own dtype:
- backbone FLOPs (forward + input-gradient backward: `common.backbone_flops_per_token`) at the rate of an
  [tokens, K] @ [K, 4K] product in the backbone dtype;
- the item logits, 2·K·J FLOPs per item-softmax row (main-part token or user), at the rate of an
  [512, K] @ [K, 4096] fp32 product;
- the item head's two gradient products, 4·K·J FLOPs per row, at the rate of the same product in the head's
  gradient dtype (model.head_gradient_dtype: bf16 with a bf16 backbone unless `--head-gradient-dtype`).
The rates are measured in the worker process just before and just after the timed steps; the floor uses
the best rate any worker of the invocation measured for the same product (this VM's bf16 rate has two
modes 3x apart, so one worker's measurements may all be slow). The table shows those best rates; the
JSON keeps each worker's own (`gflops_before_after`). s/step is the median of the timed steps. The
products are also timed briefly between every two timed steps: "ratio at adjacent rates" is the median
over steps of step time / the floor at the mean of the rates measured just before and just after that
step (the hardware's rate at that moment, so the mode the VM was in cancels out; the JSON keeps each
step's time and rates). "Adam" is one
optimizer step over the trained tables alone (memory-bound, not part of the FLOP floor); where
"Adam / floor" exceeds 0.3, that pass alone keeps the step above 1.3x its floor.

Variants: "fused" is the shipped path (fused item softmax, fused Adam, table gradients in kept
buffers, fused RMSNorm); "plain" is the reference it replaced (whole [rows, J] logits through
autograd, per-tensor Adam, autograd's fresh table gradients, transformers' RMSNorm modules).
`--compare WHAT` also times the fused path's steps with one part of it undone, the two interleaved
in the same worker: `kept-gradients` against autograd's fresh table gradients
(cllm4rec/table_gradients.py), `fused-norm` against transformers' RMSNorm modules
(cllm4rec/rms_norm.py), `bf16-head` against the item head's gradient products in fp32
(model.head_gradient_dtype), `losses` against the item softmax of another copy of cllm4rec/losses.py
(`--baseline-losses FILE`, e.g. `git show REV:cllm4rec/losses.py > FILE`). `--compile` runs the
backbone body through torch.compile (model.compile; an untimed first step compiles),
`--activation-checkpointing` recomputes each backbone layer in backward (model.activation_checkpointing).
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
from typing import Callable, Sequence

from common import REPO, backbone_ref, gib, load_losses, machine, probed_steps

DEFAULT_SIZES = ["tiny:10000", "tiny:100000", "tiny:1000000", "smollm2-135m:10000", "smollm2-135m:100000"]
COLLAB_ITEMS, REC_PROMPT, REC_TARGETS = 64, 48, 12  # items per L-step document; prompt and target items per user


def plain_item_softmax_nll_sum(hidden, table, rows, items, block_elements=None, sink=None, gradient_dtype=None):
    """The reference the fused kernel replaced: whole [M, J] logits, log-softmax and autograd."""
    import torch

    logits = hidden.float() @ table.float().t()
    return -torch.log_softmax(logits, dim=1)[rows, items].sum()


def current_rss_bytes() -> int:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


def product_name(m: int, k: int, n: int, dtype) -> str:
    return f"[{m}, {k}] @ [{k}, {n}] {str(dtype).removeprefix('torch.')}"


def worker(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    import cllm4rec.table_access
    from cllm4rec.backbone import load_backbone
    from cllm4rec.losses import products_dtype
    from cllm4rec.model import CLLM4Rec
    from cllm4rec.rms_norm import LLAMA_STYLE_RMS_NORMS, fuse_rms_norms
    from cllm4rec.templates import Items, interaction_prompt, recommendation_prompt
    from cllm4rec.tokenization import Document, IdTokenizer
    from cllm4rec.table_access import TableAccess
    from cllm4rec.table_gradients import TableGradients
    from cllm4rec.tasks import TableSet
    from common import backbone_flops_per_token, matmul_rate, product_rate_probe, seconds
    from data_prep.assets import resolve_backbone
    from trainer.build import pick_attention, pick_dtype, pick_head_gradient_dtype
    from trainer.data import pad_documents
    from trainer.engine import PlainEngine, SkipInactiveGroups, peak_rss_mib
    from trainer.phases import StepKind

    torch.manual_seed(0)
    dtype = pick_dtype(args.dtype, torch.device("cpu"))
    backbone, hf_tok = load_backbone(resolve_backbone(args.backbone, progress=False), dtype=dtype,
                                     attention=pick_attention("auto", torch.device("cpu")))
    norms = {"transformers": [(n, m) for n, m in backbone.named_modules() if type(m).__name__ in LLAMA_STYLE_RMS_NORMS]}
    if args.variant != "plain":  # model.fused_norm, as trainer/build.py does by default
        fuse_rms_norms(backbone)
    norms["fused"] = [(n, backbone.get_submodule(n)) for n, _ in norms["transformers"]]
    # the plain path's whole-logits head has no gradient products of its own: fp32 through autograd
    head_dtype = pick_head_gradient_dtype(args.head_gradient_dtype, dtype) if args.variant != "plain" else torch.float32
    task = args.task
    step = {"collab": StepKind.L_STEP, "rec": StepKind.FINETUNE}[task]
    rows = args.collab_docs * COLLAB_ITEMS if task == "collab" else args.rec_users  # item-softmax rows
    gradients_dtype = products_dtype(rows, torch.float32, head_dtype)  # what the kernel runs them in
    model = CLLM4Rec(backbone, args.users, args.items, init_std=0.02, seed=0, head_gradient_dtype=head_dtype)
    tok = IdTokenizer(hf_tok, model.vocab_rows, args.users, args.items)
    if args.activation_checkpointing:
        model.enable_activation_checkpointing()
    if args.compile:
        model.compile_backbone()
    engine = PlainEngine(model, 1e-3, 1e-3, kept_gradients=args.variant != "plain")
    if args.variant == "plain":
        cllm4rec.table_access.item_softmax_nll_sum = plain_item_softmax_nll_sum
        per_tensor = type("PerTensorAdam", (SkipInactiveGroups, torch.optim.Adam), {})
        engine.optimizer = per_tensor({s.value: model.table_parameters(s) for s in TableSet}, 1e-3, foreach=False)
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
           "variant": args.variant + ("+compile" if args.compile else "") + ("+ckpt" if args.activation_checkpointing else "")
           + ("+bf16-head" if gradients_dtype == torch.bfloat16 else ""),
           "dtype": str(dtype).removeprefix("torch."), "dim": dim, "steps": {}}
    batch = collab if task == "collab" else rec
    tokens, seq_len = int(batch["lengths"].sum()), int(batch["input_ids"].shape[1])
    # each kind of multiply-add: (FLOPs, the reference product [m, k] @ [k, n] in a dtype timed for its rate)
    parts = {"backbone": (backbone_flops_per_token(decoder, seq_len) * tokens, (tokens, dim, 4 * dim, dtype)),
             "logits": (2 * dim * args.items * rows, (512, dim, 4096, torch.float32)),
             "gradients": (4 * dim * args.items * rows, (512, dim, 4096, gradients_dtype))}
    products = list(dict.fromkeys(product for _, product in parts.values()))  # the distinct ones

    def floor_at(rates: Sequence[float]) -> float:  # seconds; rates in FLOP/s, one per product
        rate_of = dict(zip(products, rates))
        return sum(flops / rate_of[product] for flops, product in parts.values())

    engine.train_step(step, dict(batch))  # untimed (a compiled backbone compiles here)

    shipped_kernel = cllm4rec.table_access.item_softmax_nll_sum

    def step_with(sink: TableGradients | None, norm: str = "fused", head: torch.dtype = head_dtype,
                  kernel: Callable = shipped_kernel) -> Callable[[], object]:
        def run_step() -> None:
            engine.table_access, model.head_gradient_dtype = TableAccess(sink), head
            cllm4rec.table_access.item_softmax_nll_sum = kernel
            for name, module in norms[norm]:
                backbone.set_submodule(name, module)
            engine.train_step(step, dict(batch))
        return run_step

    probes = [product_rate_probe(*product) for product in products]

    def probe() -> tuple[float, ...]:  # a quick look at every rate between two timed steps
        return tuple(p() for p in probes)

    rates = [[matmul_rate(*product) for product in products]]
    kept = engine.table_access.gradients
    undone = {"kept-gradients": lambda: step_with(None), "fused-norm": lambda: step_with(kept, "transformers"),
              "bf16-head": lambda: step_with(kept, head=torch.float32),
              "losses": lambda: step_with(kept, kernel=load_losses(args.baseline_losses).item_softmax_nll_sum)}
    calls = {"shipped": step_with(kept)}
    if args.compare and args.variant == "fused":  # the same steps with one part undone, interleaved
        calls["undone"] = undone[args.compare]()
    timed = probed_steps(calls, args.steps, probe)
    rates.append([matmul_rate(*product) for product in products])
    best = [max(r) for r in zip(*rates)]  # this VM's rate drifts: the better one
    floor = floor_at(best)
    step = statistics.median(t for t, *_ in timed["shipped"])
    undone_seconds = statistics.median(t for t, *_ in timed["undone"]) if "undone" in timed else None
    own_ratio = statistics.median(t / floor_at(r) for t, *r in timed["shipped"])
    adam = seconds(lambda: engine.optimizer.step(), 2)
    out["steps"][task] = {"seconds": step, "floor_seconds": floor, "ratio": step / floor, "adam_seconds": adam,
                          "ratio_at_adjacent_rates": own_ratio,
                          "parts": {name: {"tflop": flops / 1e12, "product": product_name(*product),
                                           "gflops": best[products.index(product)] / 1e9}
                                    for name, (flops, product) in parts.items()},
                          "products": [product_name(*product) for product in products],
                          "steps_seconds_and_adjacent_gflops": [[t, *(x / 1e9 for x in r)] for t, *r in timed["shipped"]],
                          "gflops_before_after": [[x / 1e9 for x in r] for r in rates],
                          "undone_seconds": undone_seconds, "tokens": tokens, "softmax_rows": rows}
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
               "--dtype", args.dtype, "--head-gradient-dtype", args.head_gradient_dtype, "--out", str(out), *(["--compile"] if args.compile else []),
               *(["--compare", args.compare] if args.compare else []),
               *(["--baseline-losses", str(Path(args.baseline_losses).resolve())] if args.baseline_losses else []),
               *(["--activation-checkpointing"] if args.activation_checkpointing else [])]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, timeout=3600)
    result = json.loads(out.read_text())
    result["name"], result["wall_s"] = name, time.perf_counter() - started
    return result


def floors_at_best_rates(results: list[dict]) -> None:
    """Recompute every step's floor at the best rates that any worker of this invocation measured for
    the same product (the bf16 rate of this VM has two modes 3x apart, stable for minutes, so one
    worker's own measurements can both fall in the slow one). Keeps `own_floor_seconds`."""
    steps = [(r["backbone"], s) for r in results for s in r["steps"].values()]
    best: dict[tuple[str, str], float] = {}
    for backbone, s in steps:
        for part in s["parts"].values():
            key = backbone, part["product"]
            best[key] = max(best.get(key, 0.0), part["gflops"])
    for backbone, s in steps:
        for part in s["parts"].values():
            part["gflops"] = best[backbone, part["product"]]
        s["own_floor_seconds"] = s["floor_seconds"]
        s["floor_seconds"] = sum(part["tflop"] * 1e3 / part["gflops"] for part in s["parts"].values())
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
    parser.add_argument("--head-gradient-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="the item head's gradient products (model.head_gradient_dtype; auto: bf16 with a bf16 backbone)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone body (model.compile)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute backbone layers in backward (model.activation_checkpointing)")
    parser.add_argument("--compare", choices=["kept-gradients", "fused-norm", "bf16-head", "losses"],
                        help="fused path: also time each step with this part undone (autograd's fresh table gradients; "
                             "transformers' RMSNorm modules; fp32 head gradient products; the item softmax of "
                             "--baseline-losses), interleaved in the same worker")
    parser.add_argument("--baseline-losses", help="another copy of cllm4rec/losses.py, for --compare losses")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if (args.compare == "losses") != bool(args.baseline_losses):
        parser.error("--compare losses and --baseline-losses FILE go together")
    if args.worker:
        Path(args.out).write_text(json.dumps(worker(args), indent=2))
        return
    folder = Path(tempfile.mkdtemp(prefix="catalogue-bench-"))
    results = [run(size, variant, task, args, folder) for size in args.sizes for variant in args.variants
               for task in ("collab", "rec")]
    floors_at_best_rates(results)
    print(f"\n{args.users:,} users; L-step {args.collab_docs}x{COLLAB_ITEMS} items, finetuning {args.rec_users} users; "
          f"{args.steps} timed steps; {machine()}\n")
    print("| backbone (dtype) | items | path | step | s/step | FLOP floor (s) | ratio | ratio at adjacent rates | Adam (s) | "
          "Adam / floor | GFLOP/s: backbone / logits / head gradients |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for task, s in r["steps"].items():
            rates = " / ".join(f"{part['gflops']:.0f}" for part in s["parts"].values())
            print(f"| {r['name']} ({r['dtype']}) | {r['items']:,} | {r['variant']} | {task} | {s['seconds']:.3f} | "
                  f"{s['floor_seconds']:.3f} | {s['ratio']:.2f} | {s['ratio_at_adjacent_rates']:.2f} | {s['adam_seconds']:.3f} | "
                  f"{s['adam_seconds'] / s['floor_seconds']:.2f} | {rates} |")
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
