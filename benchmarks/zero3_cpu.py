"""DeepSpeed ZeRO-3 on CPU ranks (gloo): seconds per step and per epoch, per-rank peak memory, and the
all-gather / reduce-scatter volume of one training step, for 1 and 2 ranks on ML-100K.

    .venv/bin/python benchmarks/zero3_cpu.py                       # tiny and SmolLM2 backbones, 1 and 2 ranks
    .venv/bin/python benchmarks/zero3_cpu.py --backbones tiny --steps 20

The orchestrator starts each configuration under the DeepSpeed launcher (the flags of
`scripts/deepspeed_single_node.sh`, with this file as the program) in worker mode; each worker builds the recipe's DeepSpeed engine (zero3_cpu config with the comms
logger on), times `--steps` steps of each task after one untimed step, and reads DeepSpeed's comms
log for those steps. Epoch times are the measured seconds per step times the steps of a full epoch.
Run nothing else meanwhile: 2 ranks on 2 cores use one thread each.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, backbone_ref



def worker(args: argparse.Namespace) -> None:
    """Runs on every rank under the launcher; rank 0 writes the figures to args.out as JSON."""
    import deepspeed.comm as ds_comm

    from trainer.config_loading import load_config
    from trainer.data import epoch_rng
    from trainer.pipeline import TrainingRun
    from trainer.schedule import PLANNED_STEPS

    config = load_config("quick", [f"model.backbone={args.backbone}", "distributed.engine=deepspeed",
                                   f"distributed.ds_config={args.ds_config}", "tracking.mlflow=false",
                                   f"output_dir={args.scratch}"])
    run = TrainingRun(config, progress=False)
    engine, dist = run.engine, run.dist
    figures: dict[str, dict[str, float]] = {}
    for step in PLANNED_STEPS:  # one step kind per task: L-step, C-step, finetuning
        task = step.task.value
        stream, total = run.batches(step, epoch_rng(0, "bench", task))
        batches = list(itertools.islice(stream, args.steps + 1))
        engine.train_step(step, batches[0])  # untimed: first-step allocations
        ds_comm.reset_log()
        start = time.perf_counter()
        for batch in batches[1:]:
            engine.train_step(step, batch)
        seconds = time.perf_counter() - start
        log = ds_comm.log_summary(return_dict=True)["summary"]
        volume = {op: sum(v["count"] * v["msg_size_bytes"] for v in sizes.values()) / args.steps
                  for op, sizes in log.items()}
        calls = {op: {str(size): v["count"] / args.steps for size, v in sizes.items()} for op, sizes in log.items()}
        figures[task] = {"seconds_per_step": seconds / args.steps, "steps_per_epoch": total,
                         "epoch_seconds": seconds / args.steps * total, "bytes_per_step": volume,
                         "calls_per_step_by_bytes": calls}
    ranks = dist.all_gather(engine.stats())
    if dist.is_main:
        model = run.parts.model
        sizes = {"backbone_params": sum(p.ds_numel for p in model.backbone.parameters()),
                 "table_params": sum(getattr(model, n).ds_numel for n in ("collab_user", "collab_item", "content_user",
                                                                         "content_item"))}
        Path(args.out).write_text(json.dumps({"ranks": ranks, "tasks": figures, "sizes": sizes,
                                              "world_size": dist.world_size}, indent=2))


def comms_config(folder: Path, base: str = "zero3_cpu") -> Path:
    """The shipped DeepSpeed config `base` (ds_configs/<base>.json) with DeepSpeed's comms logger switched on."""
    config = json.loads((REPO / "ds_configs" / f"{base}.json").read_text())
    config["comms_logger"] = {"enabled": True, "prof_all": True, "verbose": False, "debug": False}
    path = folder / f"{base}_comms.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def launch(backbone: str, ranks: int, steps: int, folder: Path) -> dict:
    from trainer.distributed import single_node_launch

    out = folder / f"{Path(backbone).name}-{ranks}.json"
    args = [__file__, "--worker", "--backbone", backbone, "--steps", str(steps), "--out", str(out),
            "--ds-config", str(comms_config(folder)), "--scratch", str(folder / "scratch")]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // ranks)), "PYTHON": sys.executable}
    started = time.perf_counter()
    subprocess.run(single_node_launch(args, ranks), cwd=REPO, env=env, check=True, timeout=3600,
                   stdout=subprocess.DEVNULL if not os.environ.get("BENCH_VERBOSE") else None)
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - started
    return result


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["tiny", "smollm2-135m"])
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per task")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--ds-config", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    folder = Path(tempfile.mkdtemp(prefix="zero3-bench-"))
    rows = []
    for name in args.backbones:
        backbone = backbone_ref(name, folder)
        for ranks in args.ranks:
            rows.append((name, ranks, launch(backbone, ranks, args.steps, folder)))
    print(f"\nML-100K, zero3_cpu (fp32, gloo), {args.steps} timed steps per task, global batch 20\n")
    print("| backbone | ranks | task | s/step | steps/epoch | epoch (s) | all-gather MiB/step/rank | reduce-scatter MiB/step/rank |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ranks, result in rows:
        for task, fig in result["tasks"].items():
            volume = fig["bytes_per_step"]
            gather = sum(v for op, v in volume.items() if "all_gather" in op)
            scatter = sum(v for op, v in volume.items() if "reduce_scatter" in op)
            print(f"| {name} | {ranks} | {task} | {fig['seconds_per_step']:.2f} | {fig['steps_per_epoch']} | "
                  f"{fig['epoch_seconds']:.0f} | {mib(gather)} | {mib(scatter)} |")
    print("\n| backbone | ranks | backbone elements | table elements | trainable elements per rank | peak RSS per rank (MiB) |")
    print("|---|---|---|---|---|---|")
    for name, ranks, result in rows:
        per_rank = ", ".join(str(r["trainable_elements_on_rank"]) for r in result["ranks"])
        rss = ", ".join(f"{r['peak_rss_mib']:.0f}" for r in result["ranks"])
        print(f"| {name} | {ranks} | {result['sizes']['backbone_params']:,} | {result['sizes']['table_params']:,} | "
              f"{per_rank} | {rss} |")
    print(f"\nfigures as JSON: {folder}")
    print("\nraw comms per step (bytes, rank 0):")
    for name, ranks, result in rows:
        for task, fig in result["tasks"].items():
            print(f"  {name} x{ranks} {task}: " + ", ".join(f"{op}={v:,.0f}" for op, v in sorted(fig["bytes_per_step"].items())))


if __name__ == "__main__":
    main()
