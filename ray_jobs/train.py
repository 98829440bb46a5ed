"""Train CLLM4Rec with Ray Train: a TorchTrainer whose workers each run the training as one rank.

The engine is DeepSpeed ZeRO-3, or the row-sharded ID tables with `distributed.table_sharding=rows`
among the overrides (docs/cluster.md, sections 2.4 and 8.3).

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- \\
        python ray_jobs/train.py --workers 8 --gpus-per-worker 1 --storage /shared/cllm4rec \\
        --recipe paper name=paper-ray

Ray creates the process group (nccl with GPUs, gloo on CPUs) and sets RANK / WORLD_SIZE /
LOCAL_RANK; the run adopts it (`trainer.distributed.init_distributed`). Every worker runs the
whole `trainer.pipeline.TrainingRun` with `start="resume-or-start"` (the first start begins the run): the run's checkpoints
live under `--storage` (a filesystem every node sees), so when a worker dies, Ray restarts the worker
group (`--max-failures`) and it continues from the last complete checkpoint — inside an epoch with
`checkpoint.every_steps`. Rank 0 alone logs to MLflow. Each finished epoch unit is reported to Ray
(metrics only: the checkpoints are already on shared storage and are not copied again).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python ray_jobs/train.py` from a job's working directory
    sys.path.insert(0, str(REPO))


def train_loop(loop_config: dict) -> None:
    """One Ray Train worker: the training run under the distributed engine on this worker's device."""
    import ray.train
    import ray.train.torch

    from trainer.config_loading import load_config
    from trainer.pipeline import TrainingRun

    device = ray.train.torch.get_device()
    overrides = [*loop_config["overrides"], "distributed.engine=deepspeed",
                 f"device={device.type}:{device.index}" if device.type == "cuda" else "device=cpu"]
    run = TrainingRun(load_config(loop_config["recipe"], overrides), progress=False, start="resume-or-start")

    def report(tag: str, metrics: dict[str, float]) -> None:
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        ray.train.report({"unit": tag, **clean})

    run.on_unit = report
    run.run()


def build_trainer(args: argparse.Namespace):
    """The TorchTrainer for parsed command-line `args` (see `parser()`)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainer.config_loading import load_config

    storage = Path(args.storage).resolve()
    overrides = list(args.overrides)
    if not any(o.startswith("output_dir=") for o in overrides):
        overrides.append(f"output_dir={storage}/runs/{{name}}")
    name = load_config(args.recipe, overrides).name  # validates the config before any worker starts
    gpus = args.gpus_per_worker > 0
    resources = {"CPU": args.cpus_per_worker, **({"GPU": args.gpus_per_worker} if gpus else {})}
    return TorchTrainer(
        train_loop,
        train_loop_config={"recipe": args.recipe, "overrides": overrides},
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=gpus, resources_per_worker=resources),
        run_config=RunConfig(name=args.run_name or name, storage_path=str(storage / "ray"),
                             failure_config=FailureConfig(max_failures=args.max_failures)),
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (= ranks)")
    p.add_argument("--gpus-per-worker", type=float, default=0, help="0: CPU workers over gloo")
    p.add_argument("--cpus-per-worker", type=float, default=1)
    p.add_argument("--storage", required=True, help="shared path for checkpoints, results, MLflow and Ray's run state")
    p.add_argument("--max-failures", type=int, default=2, help="worker-group restarts before the run fails")
    p.add_argument("--run-name", help="Ray run name (default: the config's name)")
    p.add_argument("--address", default="auto", help="Ray cluster address (default: the job's cluster)")
    p.add_argument("--recipe", default="quick", help="shipped recipe (quick, paper) or a YAML file")
    p.add_argument("overrides", nargs="*", help="config overrides such as pretrain.rounds=10")
    return p


def main(argv: list[str] | None = None) -> int:
    import ray

    from trainer.config import ConfigError

    args = parser().parse_args(argv)
    try:
        trainer = build_trainer(args)
    except ConfigError as error:
        print(f"ray_jobs/train.py: error: {error}", file=sys.stderr)
        return 2
    ray.init(address=args.address)
    try:
        result = trainer.fit()
    except Exception as error:  # Ray Train raises once the restarts (--max-failures) are used up
        print(f"ray_jobs/train.py: training failed: {error}", file=sys.stderr)
        return 1
    print(f"finished: Ray run state in {result.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
