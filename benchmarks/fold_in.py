"""Fold-in cost (`cllm4rec fold-in`, docs/fold_in.md): seconds per thousand new ids, in one process.

    .venv/bin/python benchmarks/fold_in.py --model runs/quick/model            # a trained model
    .venv/bin/python benchmarks/fold_in.py --model tiny --items 1000 --users 1000

Two cases per run: new items only (their texts: the content passes), and new users only (a biography
and `--history` interactions each: content passes, then the collaborative passes). New items copy
the texts of random old items under new ids, new users the biographies and first training items of
random old users. "tiny" first trains the quick recipe on ML-100K with the tiny backbone (one warm-up
and one finetuning epoch; not timed). The figure per thousand ids counts the passes only; loading the
model and building its corpora ("setup"), placing new items by the default ridge alignment ("align": the
scoring pass of at most 256 old users and one fit) and writing the folder are shown apart. On a
shared machine the wall seconds vary with the load (its load average is printed beside each case);
the CPU seconds of the whole call (all threads, setup and writing included) vary less.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import backbone_ref, machine


def tiny_model(folder: Path) -> Path:
    """The quick recipe on ML-100K with the tiny backbone, one warm-up and one finetuning epoch."""
    from trainer.config_loading import load_config
    from trainer.pipeline import train

    overrides = [f"model.backbone={backbone_ref('tiny', folder)}", f"output_dir={folder / 'run'}", "tracking.mlflow=false",
                 "finetune.epochs=1", "baselines.mostpop=false", "baselines.multivae=false", "baselines.ease=false"]
    train(load_config("quick", overrides), progress=False)
    return folder / "run" / "model"


def new_tables(model: Path, folder: Path, n_items: int, n_users: int, history: int, seed: int) -> dict:
    """Table specs of copied items (n_items) or users (n_users with `history` interactions each)."""
    from data_prep.processed import load_processed
    from data_prep.readers.generic_spec import InteractionTableSpec, TextTableSpec
    from trainer.build import resolve_dataset
    from trainer.checkpoint import load_model
    from trainer.data import user_item_lists
    from trainer.serving import saved_config

    config = saved_config(load_model(model))
    data = load_processed(resolve_dataset(config.data.dataset, config.data.split_seed))
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if n_items:
        picked = rng.choice(data.n_items, n_items, replace=n_items > data.n_items)
        pd.DataFrame({"item": [f"new-{k}" for k in range(n_items)], "text": [data.item_text[j] for j in picked]}).to_csv(
            folder / "items.csv", index=False)
        return {"items": TextTableSpec(folder / "items.csv", "item", ("text",))}
    picked = rng.choice(data.n_users, n_users, replace=n_users > data.n_users)
    train = user_item_lists(data, "train")
    pd.DataFrame({"user": [f"new-{k}" for k in range(n_users)], "text": [data.user_text[u] for u in picked]}).to_csv(
        folder / "users.csv", index=False)
    rows = [(f"new-{k}", data.item_raw[j]) for k, u in enumerate(picked) for j in train.row(int(u))[:history]]
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(folder / "interactions.csv", index=False)
    return {"users": TextTableSpec(folder / "users.csv", "user", ("text",)),
            "interactions": InteractionTableSpec(folder / "interactions.csv", "user", "item")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="saved model folder, or 'tiny'")
    parser.add_argument("--items", type=int, default=200, help="new items of the items case (default 200)")
    parser.add_argument("--users", type=int, default=200, help="new users of the users case (default 200)")
    parser.add_argument("--history", type=int, default=10, help="interactions per new user (default 10)")
    parser.add_argument("--passes", type=int, default=5, help="C-step and history passes (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from data_prep.readers.new_entities import read_new_entities
    from trainer.fold_in import FoldInOptions, fold_in

    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = tiny_model(folder) if args.model == "tiny" else Path(args.model)
        print(f"model {model}, {args.passes} passes\n")
        print("| case | new ids | setup s | align s | content s | collab s | write s | pass s per 1000 ids "
              "| CPU s per 1000 ids | load average |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for case, items, users in (("items", args.items, 0), ("users", 0, args.users)):
            if not items + users:
                continue
            tables = new_tables(model, folder / case, items, users, args.history, args.seed)
            load, cpu = os.getloadavg()[0], time.process_time()
            result = fold_in(model, read_new_entities(**tables), folder / f"{case}-model",
                             FoldInOptions(passes=args.passes, history_passes=args.passes, seed=args.seed,
                                           progress=False))
            s = result.seconds
            per_thousand = (s["content"] + s["collab"]) / (items + users) * 1000
            cpu_per_thousand = (time.process_time() - cpu) / (items + users) * 1000
            print(f"| {case} | {items + users:,} | {s['setup']:.1f} | {s['align']:.1f} | {s['content']:.1f} | "
                  f"{s['collab']:.1f} | {s['write']:.1f} | {per_thousand:,.0f} | {cpu_per_thousand:,.0f} | "
                  f"{load:.1f} → {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
