"""The item softmax alone: loss + both gradients of the fused kernel against the plain whole-logits
autograd version and against its FLOP time, in one process.

    .venv/bin/python benchmarks/item_softmax.py
    .venv/bin/python benchmarks/item_softmax.py --shapes 64:1000000 --rows 512
    .venv/bin/python benchmarks/item_softmax.py --scale 2 --baseline old_losses.py   # before / after
    .venv/bin/python benchmarks/item_softmax.py --gradient-dtype bfloat16 --baseline cllm4rec/losses.py  # bf16 / fp32
    .venv/bin/python benchmarks/item_softmax.py --gradient-dtype bfloat16 --baseline-gradient-dtype bfloat16 --baseline old_losses.py

For each K:J, `--rows` hidden rows [rows, K] with one target each (the next-item loss) and an item
table [J, K], fp32, entries N(0, scale²) (logits of std scale²·√K: a scale of 2 spreads them over
hundreds, past the range where exp() is a normal float). FLOP time = 2·K·J·rows (the logits) at the
median rate of a [rows, K] @ [K, 4096] fp32 product measured here + 4·K·J·rows (the two gradient
products) at the rate of that product in `--gradient-dtype` (the fused kernel's; a baseline's are in
`--baseline-gradient-dtype`, fp32 unless set). Each time is the median of `--repeats` calls
after one untimed, the variants' calls interleaved. `--baseline` also times the
`item_softmax_nll_sum` of another copy of cllm4rec/losses.py (e.g. `git show REV:cllm4rec/losses.py`).
Plain is skipped where its [rows, J] logits would exceed `--plain-max-gib`.
"""
from __future__ import annotations

import argparse

import torch

from common import interleaved_medians, load_losses, machine, matmul_rate


def plain(hidden: torch.Tensor, table: torch.Tensor, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(hidden @ table.t(), items, reduction="sum")


def main() -> None:
    from cllm4rec.losses import item_softmax_nll_sum

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["64:10000", "64:100000", "64:1000000", "576:10000", "576:100000"],
                        help="K:J pairs")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain-max-gib", type=float, default=2.5)
    parser.add_argument("--scale", type=float, default=0.1, help="std of the hidden and table entries")
    parser.add_argument("--baseline", help="another cllm4rec/losses.py whose kernel is timed alongside")
    parser.add_argument("--gradient-dtype", default="float32", choices=["float32", "bfloat16"],
                        help="the fused kernel's gradient products (item_softmax_nll_sum's gradient_dtype)")
    parser.add_argument("--baseline-gradient-dtype", default="float32", choices=["float32", "bfloat16"],
                        help="the baseline kernel's gradient products")
    args = parser.parse_args()
    gradient_dtype = getattr(torch, args.gradient_dtype)
    kernels = {"fused": lambda *xs: item_softmax_nll_sum(*xs, gradient_dtype=gradient_dtype)}
    if args.baseline:
        baseline = load_losses(args.baseline).item_softmax_nll_sum  # older copies may predate gradient_dtype: passed only when bf16
        narrow = {"gradient_dtype": torch.bfloat16} if args.baseline_gradient_dtype == "bfloat16" else {}
        kernels["baseline"] = lambda *xs: baseline(*xs, **narrow)
    baseline_note = f", baseline: {args.baseline_gradient_dtype}" if args.baseline else ""
    print(f"\n{args.rows} rows, fp32 (fused: {args.gradient_dtype} gradient products{baseline_note}), entries of std {args.scale}, "
          f"{machine()}, "
          f"median of {args.repeats} interleaved calls after one untimed\n")
    extra = " baseline (s) | baseline / fused |" if args.baseline else ""
    print(f"| K | items | FLOP time (s) | fused (s) | fused / FLOP time |{extra} plain (s) | plain / FLOP time |")
    print("|---" * (7 + 2 * bool(args.baseline)) + "|")
    gen = torch.Generator().manual_seed(0)
    for shape in args.shapes:
        dim, n_items = (int(x) for x in shape.split(":"))
        hidden = (torch.randn(args.rows, dim, generator=gen) * args.scale).requires_grad_()
        table = (torch.randn(n_items, dim, generator=gen) * args.scale).requires_grad_()
        rows, items = torch.arange(args.rows), torch.randint(0, n_items, (args.rows,), generator=gen)
        rate = {d: matmul_rate(args.rows, dim, 4096, d) for d in {torch.float32, gradient_dtype}}
        flop_time = (2 * dim * n_items * args.rows / rate[torch.float32]
                     + 4 * dim * n_items * args.rows / rate[gradient_dtype])
        if args.rows * n_items * 4 / 2**30 <= args.plain_max_gib:
            kernels["plain"] = plain
        else:
            kernels.pop("plain", None)
        took = interleaved_medians({name: lambda k=k: k(hidden, table, rows, items).backward()
                                    for name, k in kernels.items()}, args.repeats)
        cells = [f"{took['fused']:.3f}", f"{took['fused'] / flop_time:.2f}"]
        if args.baseline:
            cells += [f"{took['baseline']:.3f}", f"{took['baseline'] / took['fused']:.2f}"]
        cells += [f"{took['plain']:.3f}", f"{took['plain'] / flop_time:.2f}"] if "plain" in took else ["–", "–"]
        print(f"| {dim} | {n_items:,} | {flop_time:.3f} | " + " | ".join(cells) + " |", flush=True)

if __name__ == "__main__":
    main()
