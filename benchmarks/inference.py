"""Whole-catalogue top-100 recommendation: users per second on ML-100K and on a 1M-item catalogue,
one user at a time against batched scoring, in one process.

    .venv/bin/python benchmarks/inference.py                       # ML-100K with SmolLM2, 1M items with tiny
    .venv/bin/python benchmarks/inference.py --users 64 --catalogues ml-100k

Each case scores `--users` users with `trainer.evaluate.recommend` (prompt of the user's training
items, one forward pass, item logits [B, J] as one matrix product against the item table, training
items excluded, top-100 with `cllm4rec.metrics.topk_excluding`), at batch size 1 and at `--batch`.
The models are untrained (tables at their initialisation): speed does not depend on the values.
"top-100 overlap" compares the two batch sizes' lists: in bf16 a padded batch rounds differently
from a single prompt, and untrained item logits are near-ties (fp32 equality: tests/test_fast_paths.py).
ML-100K uses the quick recipe's model (SmolLM2-135M, bf16 on this CPU); "1m" is a synthetic
catalogue of 1,000,000 items and 100,000 users with 50 training items each, on the tiny backbone.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import backbone_ref, machine


def ml100k_case(folder: Path):
    """(engine, corpora, description) of the quick recipe's model on ML-100K."""
    from trainer.build import build_run
    from trainer.config_loading import load_config
    from trainer.engine import PlainEngine

    config = load_config("quick", ["tracking.mlflow=false", f"output_dir={folder / 'run'}"])
    parts = build_run(config)
    engine = PlainEngine(parts.model, config.pretrain.lr, config.finetune.lr)
    return engine, parts.corpora, f"ML-100K ({parts.dataset.n_items:,} items), smollm2-135m {parts.model.compute_dtype}"


def million_case(folder: Path, n_users: int = 100_000, n_items: int = 1_000_000, per_user: int = 50):
    """(engine, corpora, description) of a synthetic 1M-item catalogue on the tiny backbone."""
    from cllm4rec.backbone import load_backbone
    from cllm4rec.interactions import UserItems
    from cllm4rec.model import CLLM4Rec
    from cllm4rec.tokenization import IdTokenizer
    from trainer.build import pick_attention, pick_dtype
    from trainer.data import Corpora
    from trainer.engine import PlainEngine

    cpu = torch.device("cpu")
    backbone, hf_tok = load_backbone(backbone_ref("tiny", folder), dtype=pick_dtype("auto", cpu),
                                     attention=pick_attention("auto", cpu))
    model = CLLM4Rec(backbone, n_users, n_items, init_std=0.02)
    rng = np.random.default_rng(0)
    indices = np.sort(rng.integers(0, n_items, size=(n_users, per_user)), axis=1).reshape(-1)
    train = UserItems(np.arange(0, n_users * per_user + 1, per_user), indices, n_items)
    corpora = Corpora(IdTokenizer(hf_tok, model.vocab_rows, n_users, n_items), train, [], [], max_items=128)
    return PlainEngine(model, 1e-3, 1e-3), corpora, f"synthetic {n_items:,} items, {n_users:,} users, tiny {model.compute_dtype}"


def users_per_second(engine, corpora, users: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    from cllm4rec.templates import ScoringPrompt
    from trainer.evaluate import recommend

    prompt = ScoringPrompt.RECOMMENDATION
    recommend(engine, corpora, users[:batch], 100, prompt=prompt, seed=0, batch_size=batch)  # untimed warm-up
    start = time.perf_counter()
    items, _ = recommend(engine, corpora, users, 100, prompt=prompt, seed=0, batch_size=batch)
    return len(users) / (time.perf_counter() - start), items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogues", nargs="+", default=["ml-100k", "1m"], choices=["ml-100k", "1m"])
    parser.add_argument("--users", type=int, default=256, help="users scored per case")
    parser.add_argument("--batch", type=int, default=64, help="users per batched forward pass")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="inference-bench-"))
    print(f"\ntop-100 over the whole catalogue, {args.users} users, {machine()}\n")
    print("| catalogue | batch 1 (users/s) | batch " + str(args.batch) + " (users/s) | speed-up | top-100 overlap |")
    print("|---|---|---|---|---|")
    for name in args.catalogues:
        engine, corpora, description = ml100k_case(folder) if name == "ml-100k" else million_case(folder)
        users = np.random.default_rng(1).choice(corpora.train.n_users, size=args.users, replace=False)
        one, items_one = users_per_second(engine, corpora, users, 1)
        many, items_many = users_per_second(engine, corpora, users, args.batch)
        overlap = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(items_one, items_many)])
        print(f"| {description} | {one:,.1f} | {many:,.1f} | {many / one:.2f}x | {overlap:.1%} |", flush=True)


if __name__ == "__main__":
    main()
