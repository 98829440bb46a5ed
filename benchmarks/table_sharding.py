"""Bytes each rank receives per step through the collectives: ID tables under DeepSpeed ZeRO-3 vs
row-sharded (`distributed.table_sharding`), on CPU ranks (gloo) with the tiny backbone (2-layer LLaMA,
K = 64, fp32), at ML-100K's table shapes and a synthetic 1M-item catalogue; beside the arithmetic of
docs/cluster.md (section 5).

    .venv/bin/python benchmarks/table_sharding.py                          # ML-100K and 1M items, 2 ranks
    .venv/bin/python benchmarks/table_sharding.py --shapes 943:1682 --ranks 2 4

Each (shape, engine, ranks) runs under the DeepSpeed launcher in worker mode: the model is built with the
shape's four tables, the engine around it (ZeRO-3: `zero3_cpu` with DeepSpeed's comms logger on;
row-sharded: `RowShardedEngine`, whose `Collectives` count their bytes), and one step of each kind runs
on the same seeded global batch (the quick recipe's 20 documents: L-step documents of 64 items, content
documents of 24 words, finetuning prompts of 48 items with 12 targets), then one scoring call (top-100
of 64 users). Received bytes: an all-gather brings (R − 1) × its input, a reduce-scatter (R − 1)/R of it,
an all-reduce 2 (R − 1)/R (a ring), an all-to-all what the others send (cllm4rec/collectives.py); DeepSpeed logs
each call's input size, converted the same way. The two float64 count all-reduces of every step (16 B)
are in neither. Bytes depend only on the batch: nothing is timed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, tiny_backbone
from zero3_cpu import comms_config

DOCS, COLLAB_ITEMS, CONTENT_WORDS, REC_PROMPT, REC_TARGETS, SCORED, TOP = 20, 64, 24, 48, 12, 64, 100
SHAPES = ["943:1682", "943:1000000"]  # users:items — ML-100K, and its users with a 1M-item catalogue
# DeepSpeed's op names → the fraction of the logged input size a rank receives, for R ranks
RECEIVED = {"all_gather": lambda r: r - 1, "reduce_scatter": lambda r: (r - 1) / r, "all_reduce": lambda r: 2 * (r - 1) / r}


def global_batches(tok, users: int, items: int) -> dict[str, list]:
    """The seeded global batch of each step kind, as per-document pieces each rank picks its share of."""
    import numpy as np

    from cllm4rec.templates import Items, Text, interaction_prompt, item_content_prompt, recommendation_prompt
    from cllm4rec.tokenization import Document

    rng = np.random.default_rng(0)
    who = rng.choice(users, size=max(DOCS, SCORED), replace=False)
    words = " ".join(["the film about a family"] * (CONTENT_WORDS // 5 + 1)).split()[:CONTENT_WORDS]
    prompts = tok.encode_segments([recommendation_prompt(int(u), rng.choice(items, REC_PROMPT, replace=False))
                                   for u in who[:SCORED]])
    return {
        "collab": tok.encode_documents([(interaction_prompt(int(u)), [Items(rng.choice(items, COLLAB_ITEMS, replace=False))])
                                        for u in who[:DOCS]]),
        "content": tok.encode_documents([(item_content_prompt(int(j)), [Text(" ".join(words))])
                                         for j in rng.choice(items, DOCS, replace=False)]),
        "rec": [Document(ids, len(ids)) for ids in prompts[:DOCS]],
        "rec_targets": [rng.choice(items, REC_TARGETS, replace=False) for _ in range(DOCS)],
        "score": [Document(ids, len(ids)) for ids in prompts],
        "scored_users": who[:SCORED],
    }


def share(docs: dict[str, list], name: str, rank: int, world: int) -> dict:
    """This rank's batch of the global batch `name` (finetuning prompts with their targets)."""
    import numpy as np
    import torch

    from trainer.data import pad_documents

    batch = pad_documents(docs[name][rank::world])
    if name == "rec":
        targets = docs["rec_targets"][rank::world]
        batch["target_rows"] = torch.arange(len(targets)).repeat_interleave(REC_TARGETS)
        batch["target_items"] = torch.from_numpy(np.concatenate(targets)).long()
    return batch


def worker(args: argparse.Namespace) -> None:
    """Runs on every rank under the launcher; rank 0 writes every rank's received bytes to args.out."""
    import deepspeed.comm as ds_comm
    import torch

    from cllm4rec.backbone import load_backbone
    from cllm4rec.interactions import UserItems
    from cllm4rec.model import CLLM4Rec
    from cllm4rec.tokenization import IdTokenizer
    from trainer.deepspeed_engine import DeepSpeedEngine, fill_ds_config
    from trainer.distributed import init_distributed
    from trainer.phases import StepKind
    from trainer.rows_engine import RowShardedEngine

    dist = init_distributed("cpu", require_group=True)
    cpu = torch.device("cpu")
    backbone, hf_tok = load_backbone(args.backbone, dtype=torch.float32)
    model = CLLM4Rec(backbone, args.users, args.items, init_std=0.02, seed=0)
    docs = global_batches(IdTokenizer(hf_tok, model.vocab_rows, args.users, args.items), args.users, args.items)
    if args.engine == "rows":
        engine = RowShardedEngine(model, 1e-3, 1e-3, dist=dist)
        reset, count = engine.comm.reset, lambda: dict(engine.comm.received)
    else:
        engine = DeepSpeedEngine(model, 1e-3, 1e-3, ds_config=fill_ds_config(Path(args.ds_config), DOCS, dist.world_size),
                                 dist=dist, device=cpu)
        reset, count = ds_comm.reset_log, lambda: received_by_deepspeed(ds_comm, dist.world_size)
    figures = {}
    for step in (StepKind.L_STEP, StepKind.C_STEP, StepKind.FINETUNE):
        batch = share(docs, step.task.value, dist.rank, dist.world_size)
        reset()
        engine.train_step(step, batch)
        figures[step.task.value] = count()
    nothing = UserItems.from_lists([[] for _ in range(args.users)], args.items)
    reset()
    engine.rank_items(share(docs, "score", dist.rank, dist.world_size), nothing,
                      docs["scored_users"][dist.rank :: dist.world_size], TOP)
    figures["score"] = count()
    ranks = dist.all_gather(figures)
    if dist.is_main:
        Path(args.out).write_text(json.dumps({"ranks": ranks, "world": dist.world_size}, indent=2))


def received_by_deepspeed(ds_comm, world: int) -> dict[str, float]:
    """The bytes this rank received since the last reset, by kind, from DeepSpeed's comms log."""
    out: dict[str, float] = {}
    for op, sizes in ds_comm.log_summary(return_dict=True)["summary"].items():
        kind = next(k for k in (*RECEIVED, op) if k in op)
        factor = RECEIVED.get(kind, lambda r: 1.0)(world)
        out[kind] = out.get(kind, 0.0) + sum(v["count"] * v["msg_size_bytes"] for v in sizes.values()) * factor
    return out


def launch(engine: str, users: int, items: int, ranks: int, backbone: Path, folder: Path) -> dict:
    from trainer.distributed import single_node_launch

    out = folder / f"{engine}-{users}x{items}-{ranks}.json"
    args = [__file__, "--worker", "--engine", engine, "--users", str(users), "--items", str(items),
            "--backbone", str(backbone), "--out", str(out), "--ds-config", str(comms_config(folder))]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // ranks)), "PYTHON": sys.executable}
    subprocess.run(single_node_launch(args, ranks), cwd=REPO, env=env, check=True, timeout=3600,
                   stdout=subprocess.DEVNULL if not os.environ.get("BENCH_VERBOSE") else None)
    return json.loads(out.read_text())


def table_arithmetic(users: int, items: int, ranks: int, dim: int, step: str) -> str:
    """docs/cluster.md, section 5, for fp32 tables (zero3_cpu), in KiB: ZeRO-3 gathers all four tables in
    the forward and again in the backward of a training step ((R−1)/R of each reaches a rank) and
    reduce-scatters the trained pair once; a scoring pass gathers them once."""
    share, pair = (ranks - 1) / ranks, (users + items) * dim * 4
    if step == "score":
        return f"{kib(share * 2 * pair)} + 0"
    return f"{kib(2 * share * 2 * pair)} + {kib(share * pair)}"


def kib(n: float) -> str:
    return f"{n / 2**10:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="users:items")
    parser.add_argument("--ranks", nargs="+", type=int, default=[2])
    parser.add_argument("--engines", nargs="+", default=["zero3", "rows"], choices=["zero3", "rows"])
    for hidden in ("--worker", "--engine", "--users", "--items", "--backbone", "--out", "--ds-config"):
        parser.add_argument(hidden, action="store_true" if hidden == "--worker" else "store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.users, args.items = int(args.users), int(args.items)
        worker(args)
        return
    folder = Path(tempfile.mkdtemp(prefix="table-sharding-"))
    backbone = tiny_backbone(folder / "tiny")
    print(f"\nbytes received per rank per step (KiB, mean over the ranks), tiny backbone (K = 64, fp32), gloo; "
          f"global batch {DOCS} documents; scoring: top-{TOP} of {SCORED} users\n")
    print("| users | items | ranks | step | engine | all-gather | reduce-scatter | all-to-all | all-reduce | total | "
          "ZeRO-3 table arithmetic (gathered + reduced) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        users, items = map(int, shape.split(":"))
        for ranks in args.ranks:
            for engine in args.engines:
                result = launch(engine, users, items, ranks, backbone, folder)
                for step in result["ranks"][0]:
                    kinds = {}
                    for rank in result["ranks"]:
                        for kind, value in rank[step].items():
                            kinds[kind] = kinds.get(kind, 0.0) + value / ranks
                    cells = [kib(kinds.get(k, 0.0)) for k in ("all_gather", "reduce_scatter", "all_to_all", "all_reduce")]
                    table = table_arithmetic(users, items, ranks, 64, step) if engine == "zero3" else ""
                    print(f"| {users:,} | {items:,} | {ranks} | {step} | {engine} | {' | '.join(cells)} | "
                          f"{kib(sum(kinds.values()))} | {table} |")
    print(f"\nfigures as JSON: {folder}")


if __name__ == "__main__":
    main()
