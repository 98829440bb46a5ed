"""The item softmax alone: loss + both gradients of the fused kernel against the plain whole-logits
autograd version and against its FLOP time, in one process.

    .venv/bin/python benchmarks/item_softmax.py
    .venv/bin/python benchmarks/item_softmax.py --shapes 64:1000000 --rows 512

For each K:J, `--rows` hidden rows [rows, K] with one target each (the next-item loss) and an item
table [J, K], fp32. FLOP time = 6·K·J·rows at the median rate of a [rows, K] @ [K, 4096] fp32
product measured here. Plain is skipped where its [rows, J] logits would exceed `--plain-max-gib`.
"""
from __future__ import annotations

import argparse
import os

import torch

from common import matmul_rate, seconds


def plain(hidden: torch.Tensor, table: torch.Tensor, items: torch.Tensor) -> None:
    torch.nn.functional.cross_entropy(hidden @ table.t(), items, reduction="sum").backward()


def main() -> None:
    from cllm4rec.losses import item_softmax_nll_sum

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["64:10000", "64:100000", "64:1000000", "576:10000", "576:100000"],
                        help="K:J pairs")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain-max-gib", type=float, default=2.5)
    args = parser.parse_args()
    print(f"\n{args.rows} rows, fp32, {os.cpu_count()} CPU threads, {args.repeats} timed calls after one untimed\n")
    print("| K | items | FLOP time (s) | fused (s) | fused / FLOP time | plain (s) | plain / FLOP time |")
    print("|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for shape in args.shapes:
        dim, n_items = (int(x) for x in shape.split(":"))
        hidden = (torch.randn(args.rows, dim, generator=gen) * 0.1).requires_grad_()
        table = (torch.randn(n_items, dim, generator=gen) * 0.1).requires_grad_()
        rows, items = torch.arange(args.rows), torch.randint(0, n_items, (args.rows,), generator=gen)
        flop_time = 6 * dim * n_items * args.rows / matmul_rate(args.rows, dim, 4096, torch.float32)
        fused = seconds(lambda: item_softmax_nll_sum(hidden, table, rows, items).backward(), args.repeats)
        if args.rows * n_items * 4 / 2**30 <= args.plain_max_gib:
            whole = seconds(lambda: plain(hidden, table, items), args.repeats)
            plain_cells = f"{whole:.3f} | {whole / flop_time:.2f}"
        else:
            plain_cells = "– | –"
        print(f"| {dim} | {n_items:,} | {flop_time:.3f} | {fused:.3f} | {fused / flop_time:.2f} | {plain_cells} |", flush=True)


if __name__ == "__main__":
    main()
