"""Ray job: shard a processed dataset's three corpora (collab, content, finetune) into WebDataset tars.

    ray job submit --address http://HEAD:8265 --runtime-env ray_jobs/runtime_env.yaml -- \
        python ray_jobs/shard_corpora.py --dataset PROCESSED_DIR --out SHARD_DIR [--samples-per-shard N]
    python ray_jobs/shard_corpora.py --dataset PROCESSED_DIR --out SHARD_DIR   # starts a local Ray

The driver plans the shards (data_prep.shards.plan_shards); Ray Data writes them, one row per shard
(`ray.data.from_items(...).map(...)`, each row through data_prep.shards.write_shard); the driver then
writes manifest.json. The output equals `data_prep.shards.write_shards` byte for byte. Ray Data's own
`Dataset.write_webdataset` is not used: it stamps members with the current time and names files by
block, so its shards are neither reproducible nor known to the manifest in advance.
SHARD_DIR must be on a filesystem every Ray node can write (as for any Ray Data write); it is
replaced whole or not at all. Exit status: 0 done, 2 bad input (the message names the file).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_folder
from data_prep.errors import DataPrepError
from data_prep.shards import (CORPORA, DEFAULT_MAX_SHARD_BYTES, DEFAULT_SAMPLES_PER_SHARD, ShardJob,
                              plan_shards, write_manifest, write_shard)


def _write_row(row: dict[str, Any], folder: str) -> dict[str, Any]:
    """Ray Data map function: one planned shard row → its written-shard record."""
    job = ShardJob(str(row["corpus"]), str(row["name"]), [int(k) for k in row["keys"]],
                   [str(p) for p in row["payloads"]])
    return write_shard(Path(folder), job)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="processed dataset folder (cllm4rec prepare)")
    parser.add_argument("--out", type=Path, required=True, help="shard folder to write (replaced whole)")
    parser.add_argument("--samples-per-shard", type=int, default=DEFAULT_SAMPLES_PER_SHARD)
    parser.add_argument("--max-shard-bytes", type=int, default=DEFAULT_MAX_SHARD_BYTES)
    parser.add_argument("--seed", type=int, default=None,
                        help="permute each corpus with this seed before sharding (default: canonical order)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address ('auto', host:port); default: RAY_ADDRESS or a local Ray")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        plan = plan_shards(args.dataset, args.out, samples_per_shard=args.samples_per_shard,
                           max_shard_bytes=args.max_shard_bytes, seed=args.seed)
    except DataPrepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import ray

    ray.init(address=args.address)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = [{"corpus": j.corpus, "name": j.name, "keys": j.keys, "payloads": j.payloads} for j in plan.jobs]
    blocks = min(len(rows), 2 * max(1, int(ray.cluster_resources().get("CPU", 1))))
    with atomic_folder(args.out) as tmp:
        written = (ray.data.from_items(rows, override_num_blocks=blocks)
                   .map(_write_row, fn_kwargs={"folder": str(tmp)}, num_cpus=1)
                   .take_all())
        manifest = plan.manifest(written)
        write_manifest(tmp, manifest)
    seconds = time.perf_counter() - start
    print(f"dataset {manifest['dataset']['name']} (meta.json sha256 {manifest['dataset']['meta_sha256'][:12]}) "
          f"-> {args.out}")
    for corpus in CORPORA:
        entry = manifest["corpora"][corpus]
        print(f"  {corpus:<9} {len(entry['shards']):>5} shards {entry['samples']:>9} samples "
              f"{entry['bytes'] / 2**20:>9.2f} MiB")
    print(f"  wall time {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
