"""The Ray jobs on ML-100K: shard job wall time and shard sizes; Ray Train wall time against the same
training in a plain process.

    .venv/bin/python benchmarks/ray_jobs.py                      # tiny backbone, 1 pretraining round
    .venv/bin/python benchmarks/ray_jobs.py --backbone smollm2-135m --workers 2

Starts a one-node Ray cluster on loopback (its own process group, killed at the end), submits
`ray_jobs/shard_corpora.py` for ML-100K, then trains the same short schedule twice from the shards:
`ray_jobs/train.py` with --workers CPU workers (DeepSpeed ZeRO-3 over gloo), and `python -m trainer`
in one plain process. Wall times include process start-up. Run nothing else meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def timed(command: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as sink:
        subprocess.run(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, check=True, timeout=7200)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny", help="tiny (benchmarks/common.py's) or a backbone reference")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples-per-shard", type=int, default=256)
    args = parser.parse_args()
    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
    from ray_jobs.local_cluster import start_local_cluster, stop_local_cluster
    from common import backbone_ref
    from trainer.build import resolve_dataset

    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    dataset = resolve_dataset("ml-100k")
    backbone = backbone_ref(args.backbone, work)
    head, address = start_local_cluster(Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp")), os.cpu_count() or 2)
    try:
        submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
                  "--runtime-env", str(REPO / "ray_jobs" / "runtime_env.yaml"), "--", sys.executable]
        shards = work / "shards"
        shard_s = timed([*submit, "ray_jobs/shard_corpora.py", "--dataset", str(dataset), "--out", str(shards),
                         "--samples-per-shard", str(args.samples_per_shard)], work / "shard.log")
        schedule = [f"model.backbone={backbone}", "pretrain.warmup_epochs=1", "pretrain.rounds=1", "finetune.epochs=1",
                    "finetune.content_epoch=false", "baselines.multivae=false", "baselines.ease=false",
                    f"data.shards={shards}"]
        ray_s = timed([*submit, "ray_jobs/train.py", "--workers", str(args.workers), "--storage", str(work / "ray"),
                       "name=ray", *schedule], work / "ray-train.log")
        plain_s = timed([sys.executable, "-m", "trainer", "--no-progress", "name=plain", f"output_dir={work}/plain",
                         "distributed.engine=plain", *schedule], work / "plain-train.log")
    finally:
        stop_local_cluster(head)
    manifest = json.loads((shards / "manifest.json").read_text())
    print(f"\nML-100K shards ({args.samples_per_shard} samples per shard), Ray job wall time {shard_s:.1f} s\n")
    print("| corpus | shards | samples | MiB |")
    print("|---|---|---|---|")
    for name, corpus in manifest["corpora"].items():
        size = sum(s["bytes"] for s in corpus["shards"]) / 2**20
        print(f"| {name} | {len(corpus['shards'])} | {sum(s['samples'] for s in corpus['shards'])} | {size:.2f} |")
    print(f"\nTraining from the shards ({args.backbone}; warm-up 1, 1 round, 1 finetuning epoch, no baselines)\n")
    print("| run | wall time (s) |")
    print("|---|---|")
    print(f"| Ray Train, {args.workers} CPU workers, DeepSpeed ZeRO-3 | {ray_s:.1f} |")
    print(f"| plain process (`python -m trainer`) | {plain_s:.1f} |")
    for name in ("ray/runs/ray", "plain"):
        results = json.loads((work / name / "results.json").read_text())
        m = results["models"]["CLLM4Rec"]
        print(f"{name}: engine {results['engine']}, R@20 {m['recall@20']:.4f}, N@100 {m['ndcg@100']:.4f}")
    print(f"logs and outputs: {work}")


if __name__ == "__main__":
    main()
