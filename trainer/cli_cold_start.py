"""The command-line parts of fold-in options and the cold-start protocol (`trainer/cli.py` registers them):
`cllm4rec prepare cold-start` (the split) and `cllm4rec evaluate --cold-start` (the table)."""
from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.cold_start import KINDS
from trainer.checkpoint import COMPLETE
from trainer.config import ALIGN_FEATURES, ALIGNMENTS, ITEM_ALIGNMENTS


def add_fold_in_options(p: argparse.ArgumentParser) -> None:
    """--passes, --history-passes, --align, --align-users, --align-features, --lr, --batch-size and --seed of a
    fold-in (`fold_in_options`)."""
    p.add_argument("--passes", type=int, default=0, help="fold-in C-step epochs over the new texts (default 0)")
    p.add_argument("--history-passes", type=int, default=5, help="fold-in epochs over the new users' histories "
                   "(default 5)")
    p.add_argument("--align", choices=ITEM_ALIGNMENTS, default="ridge", help="where new items start their collaborative "
                   "rows: their content rows (none), or their text's image under a map fitted on the old items, "
                   "moments, ridge (least squares to the rows; the default) or rank (fitted by the model's own "
                   "ranking of old users' items; docs/fold_in.md, section 2)")
    p.add_argument("--align-users", choices=ALIGNMENTS, default="none", help="where new users start their "
                   "collaborative rows: their content rows (none, the default), or the image of their history "
                   "items' texts under a map fitted on the old users, moments or ridge (docs/fold_in.md, section 2)")
    p.add_argument("--align-features", choices=ALIGN_FEATURES, default="tfidf", help="what the maps of --align and "
                   "--align-users read of an item's text: its TF-IDF vector reduced by latent semantic analysis "
                   "(tfidf, the default; ridge and rank maps only), or the mean of its input word embeddings (words; needed "
                   "by moments)")
    p.add_argument("--lr", type=float, help="fold-in Adam lr of the new rows (default: the model's own, its "
                   "pretrain.lr for the C-step passes and finetune.lr for the history passes)")
    p.add_argument("--batch-size", type=int, help="fold-in documents per step (default: the model's "
                   "pretrain.batch_size)")
    p.add_argument("--seed", type=int, default=0, help="batch order (and the random rows of a cold-start "
                   "evaluation; default 0)")


def fold_in_options(args: argparse.Namespace):
    """The FoldInOptions of `add_fold_in_options`' flags and --no-progress."""
    from trainer.fold_in import FoldInOptions

    return FoldInOptions(passes=args.passes, history_passes=args.history_passes, lr=args.lr,
                         batch_size=args.batch_size, seed=args.seed, align=args.align,
                         align_users=args.align_users, align_features=args.align_features,
                         progress=not args.no_progress)


def add_prepare_cold_start(sources: argparse._SubParsersAction) -> None:
    """`prepare cold-start DATASET`: the split of docs/fold_in.md, section 5."""
    p = sources.add_parser("cold-start", help="a prepared dataset without a seeded share of its items or users, "
                           "what a fold-in and the evaluation need of them kept aside (cold-start evaluation)")
    p.add_argument("dataset", help="processed dataset folder, or a name prepared into the cache (ml-100k)")
    p.add_argument("--kind", choices=KINDS, default="items", help="hold out items (their texts and every "
                   "interaction) or users (their biographies and first 1-3 interactions to fold in, the rest to "
                   "find); default items")
    p.add_argument("--fraction", type=float, default=0.1, help="share of the items or users to hold out (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="hold-out seed (default 0); the split keeps the dataset's")
    p.add_argument("--out", type=Path, help="output folder (default: <cache>/datasets/<name>-cold-<kind>-seed<seed>)")
    p.add_argument("--force", action="store_true", help="replace --out even when it is another, non-empty folder")


def prepare_cold_start(args: argparse.Namespace) -> int:
    """Write the cold-start split and summarise it."""
    from data_prep.cold_start import FIELD, write_cold_start
    from data_prep.prepare import check_output, default_output, summary
    from data_prep.processed import read_meta
    from trainer.build import resolve_dataset

    source = resolve_dataset(args.dataset)
    name = f"{read_meta(source)['name']}-cold-{args.kind}-seed{args.seed}"
    out = check_output(args.out or default_output(name), [source], force=args.force)
    write_cold_start(source, out, kind=args.kind, fraction=args.fraction, seed=args.seed)
    meta = read_meta(out)
    info = meta[FIELD]
    print(summary(meta, out))
    print(f"  held out (seed {info['seed']}): {info['heldout']:,} {info['kind']}; {info['heldout_interactions']:,} "
          f"interactions of {info['heldout_users']:,} users to find, {info['history_interactions']:,} to fold in")
    print(f"train on it with data.dataset={out}")
    return 0


def add_evaluate_cold_start(p: argparse.ArgumentParser) -> None:
    """The flags of `evaluate --cold-start`."""
    p.add_argument("--cold-start", action="store_true", help="fold the held-out items or users of the model's "
                   "cold-start split in and rank against the baselines (docs/fold_in.md, section 5)")
    p.add_argument("--k", type=int, default=20, help="with --cold-start: the metrics' cut-off (default 20)")
    p.add_argument("--out", type=Path, help="with --cold-start: results folder (default: cold-start beside the model)")
    p.add_argument("--max-users", type=int, help="with --cold-start: only the first N users (by index) with held-out "
                   "interactions (smoke runs)")
    p.add_argument("--no-reviews", action="store_true", help="with --cold-start: fold held-out users in without the "
                   "reviews of their history interactions (default: with them, where the split holds them)")
    p.add_argument("--no-mlflow", action="store_true", help="with --cold-start: do not log to MLflow")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_fold_in_options(p)


def evaluate_cold_start(args: argparse.Namespace) -> int:
    """Run the cold-start evaluation of a saved model; print the table and where it went."""
    from data_prep.prepare import check_output
    from trainer.cold_start import ColdStartOptions, default_out, evaluate_cold_start as evaluate, table_markdown

    out = check_output(args.out or default_out(args.model), [args.model], replaceable=_holds_results,
                       what="a cold-start evaluation")
    options = ColdStartOptions(k=args.k, fold_in=fold_in_options(args), reviews=not args.no_reviews, seed=args.seed,
                               max_users=args.max_users, mlflow=not args.no_mlflow, progress=not args.no_progress)
    report = evaluate(args.model, out, options)
    print(table_markdown(report))
    print(f"cold start: {out / 'results.md'}, {out / 'results.json'}; folded model {report['folded_model']}")
    return 0


def _holds_results(folder: Path) -> bool:
    """Whether `folder` holds an earlier cold-start evaluation (its results or its folded model)."""
    return (folder / "results.json").is_file() or (folder / "model" / COMPLETE).is_file()
