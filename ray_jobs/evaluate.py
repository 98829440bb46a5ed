"""Evaluate a saved CLLM4Rec model as a Ray job: whole-catalogue Recall@K / NDCG@K on one split.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python ray_jobs/evaluate.py --model /shared/cllm4rec/runs/paper-ray/model --split test --gpus 1

The evaluation runs in one Ray task (with the requested CPUs / GPUs) on whichever node has them;
the model folder and its dataset must be readable there. Prints the metrics as JSON and, with
--out, writes them to a file (atomically).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def evaluate_model(model: str, split: str) -> dict[str, float]:
    from trainer.serving import evaluate_saved

    return evaluate_saved(Path(model), split)


def main(argv: list[str] | None = None) -> int:
    import ray

    from data_prep.atomic import atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="saved model folder (<output_dir>/model or best/)")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--cpus", type=float, default=1)
    p.add_argument("--gpus", type=float, default=0)
    p.add_argument("--out", type=Path, help="also write the metrics here as JSON")
    p.add_argument("--address", default="auto")
    args = p.parse_args(argv)
    if not (Path(args.model) / "COMPLETE").is_file():
        print(f"ray_jobs/evaluate.py: error: {args.model} is not a complete saved model folder", file=sys.stderr)
        return 2
    ray.init(address=args.address)
    task = ray.remote(num_cpus=args.cpus, num_gpus=args.gpus)(evaluate_model)
    metrics = ray.get(task.remote(str(Path(args.model).resolve()), args.split))
    text = json.dumps({"model": str(args.model), "split": args.split, **metrics}, indent=2)
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
