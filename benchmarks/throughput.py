"""Useful-token throughput of the three training steps on ML-100K against the raw dense rate of the
same backbone, the padding that length bucketing leaves, fp32 against bf16, in one process.

    .venv/bin/python benchmarks/throughput.py                                 # tiny and SmolLM2, fp32 and bf16
    .venv/bin/python benchmarks/throughput.py --backbones tiny --steps 10

For each backbone and dtype (the quick recipe's corpora and batch sizes, the plain engine): the first
`--steps` + 1 batches of one epoch of each step; each timed batch is built and trained (a full
`train_step`: data, forward, backward, Adam), then the same backbone runs a dense batch of the same
[B, T] shape — every token real, no padding — forward and input-gradient backward (plus the
vocabulary head on every position for the content step, which uses it). Useful rate = real
(non-padding) tokens / training seconds; raw rate = B·T / dense seconds; both over the same shapes.
Padding of a whole epoch is given for the shipped length-bucketed batches and for random batches.
`--attentions eager sdpa` compares the backbone's attention kernels (model.attention), `--compile
false true` the eager and the torch.compile'd backbone (model.compile; the untimed first step compiles),
`--fused-norm false true` transformers' RMSNorm modules and the fused one (model.fused_norm).
Run nothing else meanwhile.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import backbone_ref, machine

TASKS = ("collab", "content", "rec")


def epoch_stream(parts, config, task: str, seed: int):
    """One epoch's batch stream of `task` (the quick recipe's batch sizes)."""
    from trainer.data import epoch_rng

    corpora, rng = parts.corpora, epoch_rng(seed, "throughput", task)
    if task == "collab":
        return corpora.collab_batches(rng, config.pretrain.batch_size, reorder=True)
    if task == "content":
        return corpora.content_batches(rng, config.pretrain.batch_size)
    fine = config.finetune
    return corpora.finetune_batches(rng, fine.batch_size, mode=fine.mask_mode, ratio=fine.mask_ratio, target=fine.target)


def epoch_padding(parts, config, task: str) -> dict[str, float]:
    """Padding fraction of a whole epoch: the shipped bucketed batches, and random batches of the same documents."""
    from trainer.data import bucket_batches

    lengths = np.concatenate([b["lengths"].numpy() for b in epoch_stream(parts, config, task, seed=1)])
    batch_size = config.finetune.batch_size if task == "rec" else config.pretrain.batch_size
    out = {}
    for name, window in (("bucketed", 50), ("random", 1)):
        batches = bucket_batches(lengths, batch_size, np.random.default_rng(0), window=window)
        out[name] = 1 - lengths.sum() / sum(len(b) * lengths[b].max() for b in batches)
    return out


def dense_step(model, shape: tuple[int, int], vocab_head: bool, gen: torch.Generator) -> None:
    """Forward + input-gradient backward of the frozen backbone on a dense [B, T] batch of word ids."""
    from cllm4rec.losses import vocab_cross_entropy_sum

    ids = torch.randint(0, model.vocab_rows, shape, generator=gen)
    embeds = model.backbone.get_input_embeddings()(ids).detach().requires_grad_()
    hidden = model.decoder(inputs_embeds=embeds, use_cache=False).last_hidden_state
    if vocab_head:
        logits = model.backbone.get_output_embeddings()(hidden[:, :-1].reshape(-1, model.dim))
        loss = vocab_cross_entropy_sum(logits, ids[:, 1:].reshape(-1))
    else:
        loss = hidden.float().square().sum()
    loss.backward()


def measure(backbone: str, dtype: str, attention: str, compile_backbone: bool, fused_norm: bool, steps: int,
            folder: Path) -> list[dict]:
    from trainer.build import build_run
    from trainer.config_loading import load_config
    from trainer.engine import PlainEngine
    from trainer.schedule import PLANNED_STEPS

    config = load_config("quick", [f"model.backbone={backbone}", f"model.dtype={dtype}", f"model.attention={attention}",
                                   f"model.compile={str(compile_backbone).lower()}", f"model.fused_norm={str(fused_norm).lower()}",
                                   "tracking.mlflow=false", f"output_dir={folder / 'run'}"])
    parts = build_run(config)
    engine = PlainEngine(parts.model, config.pretrain.lr, config.finetune.lr)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for step in PLANNED_STEPS:  # one step kind per task: L-step, C-step, finetuning
        task = step.task.value
        stream = epoch_stream(parts, config, task, seed=0)
        train_s = dense_s = 0.0
        real = padded = 0
        for index in range(steps + 1):
            start = time.perf_counter()
            batch = next(stream)
            shape = tuple(batch["input_ids"].shape)
            engine.train_step(step, batch)
            middle = time.perf_counter()
            dense_step(parts.model, shape, task == "content", gen)
            end = time.perf_counter()
            if index:  # the first step of each task is untimed (allocations)
                train_s, dense_s = train_s + middle - start, dense_s + end - middle
                real, padded = real + int(batch["lengths"].sum()), padded + shape[0] * shape[1]
        rows.append({"backbone": backbone, "dtype": dtype, "task": task, "useful_tps": real / train_s,
                     "raw_tps": padded / dense_s, "batch_padding": 1 - real / padded, "tokens": real,
                     "attention": parts.model.backbone.config._attn_implementation + ("+compile" if compile_backbone else "")
                     + ("" if fused_norm else "+hf-norm"),
                     **{f"epoch_padding_{k}": v for k, v in epoch_padding(parts, config, task).items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["tiny", "smollm2-135m"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--attentions", nargs="+", default=["auto"], choices=["auto", "eager", "sdpa"],
                        help="backbone attention kernels to compare (model.attention)")
    parser.add_argument("--compile", nargs="+", default=["false"], choices=["false", "true"],
                        help="model.compile values to compare (true: the first step of the first task compiles)")
    parser.add_argument("--fused-norm", nargs="+", default=["true"], choices=["false", "true"],
                        help="model.fused_norm values to compare (false: transformers' RMSNorm modules)")
    parser.add_argument("--steps", type=int, default=4, help="timed batches per step and dtype")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="throughput-bench-"))
    rows = [row for name in args.backbones for dtype in args.dtypes for attention in args.attentions
            for compiled in args.compile for fused in args.fused_norm
            for row in measure(backbone_ref(name, folder), dtype, attention, compiled == "true", fused == "true",
                               args.steps, folder)]
    names = {backbone_ref(n, folder): n for n in args.backbones}
    print(f"\nML-100K, quick recipe batches, {args.steps} timed batches per step, {machine()}\n")
    print("| backbone | dtype | kernels | step | useful tok/s | raw dense tok/s | useful / raw | padding (timed batches) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {names[r['backbone']]} | {r['dtype']} | {r['attention']} | {r['task']} | {r['useful_tps']:,.0f} | "
              f"{r['raw_tps']:,.0f} | {r['useful_tps'] / r['raw_tps']:.2f} | {r['batch_padding']:.3f} |")
    print("\n| step | epoch padding, length-bucketed batches | epoch padding, random batches |")
    print("|---|---|---|")
    for r in rows[: len(TASKS)]:
        print(f"| {r['task']} | {r['epoch_padding_bucketed']:.3f} | {r['epoch_padding_random']:.3f} |")
    for name in args.backbones:
        for task in TASKS:
            same = [r for r in rows if names[r["backbone"]] == name and r["task"] == task
                    and r["attention"] == rows[0]["attention"]]
            rate = {r["dtype"]: r["raw_tps"] for r in same}
            useful = {r["dtype"]: r["useful_tps"] for r in same}
            if len(rate) == 2:
                print(f"{name} {task}: bf16 / fp32 raw rate {rate['bfloat16'] / rate['float32']:.2f}x, "
                      f"useful rate {useful['bfloat16'] / useful['float32']:.2f}x")


if __name__ == "__main__":
    main()
