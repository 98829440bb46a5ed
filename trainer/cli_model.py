"""The `cllm4rec` commands that use a trained model: evaluate, diagnose, recommend, export-embeddings,
two-tower, export, fold-in and serve."""
from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.errors import DataPrepError
from trainer.cli_cold_start import (add_evaluate_cold_start, add_fold_in_options, evaluate_cold_start,
                                    fold_in_options)
from trainer.cli_data import add_table_flags
from trainer.config import ConfigError


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
    ("user_row_norm_ratio", "user row norm / word norm", "far below 1: the backbone reads user tokens faintly"),
    ("item_row_norm_ratio", "item row norm / word norm", "far below 1: the backbone reads item tokens faintly"),
)


def cmd_diagnose(args: argparse.Namespace) -> int:
    """How user-specific a saved model's scores are (cllm4rec/diagnostics.py), as a small table."""
    from trainer.serving import diagnose_saved

    if any(cap < 0 for cap in args.history_caps):
        raise ConfigError(f"--history-caps: caps must be >= 0, got {args.history_caps}")
    result = diagnose_saved(args.model, args.split, args.users, tuple(args.history_caps))
    print(f"{args.model}: {result['n_users']} users with {args.split} items\n")
    print("| diagnostic | value | reads |\n|---|---|---|")
    for key, title, reading in DIAGNOSTICS:
        print(f"| {title} | {result[key]:.4f} | {reading} |")
    caps = result.get("history_caps", {})
    if caps:
        columns = [k for k in next(iter(caps.values())) if not k.startswith("n_")]
        print(f"\n{args.split} metrics of every user with {args.split} items, each prompt holding at most N random "
              f"training items (0: the user rows alone)\n")
        print("| N | " + " | ".join(columns) + " |\n" + "|---" * (len(columns) + 1) + "|")
        for cap, metrics in caps.items():
            print(f"| {cap} | " + " | ".join(f"{metrics[c]:.4f}" for c in columns) + " |")
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
    from trainer.config_loading import parse_override
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
    """The table specs of `fold-in` (text columns default to 'text'; review columns to the interactions')."""
    from data_prep.readers.generic_spec import InteractionTableSpec, ReviewTableSpec, TextTableSpec

    return {"items": args.items and TextTableSpec(args.items, args.item_id_col or args.item_col,
                                                  tuple(args.item_text_col or ["text"])),
            "users": args.users and TextTableSpec(args.users, args.user_id_col or args.user_col,
                                                  tuple(args.user_text_col or ["text"])),
            "interactions": args.interactions and InteractionTableSpec(args.interactions, args.user_col, args.item_col,
                                                                      args.time_col),
            "reviews": args.reviews and ReviewTableSpec(args.reviews, args.review_user_col or args.user_col,
                                                        args.review_item_col or args.item_col, args.review_text_col)}


def _placed(report: dict, entity: str) -> str:
    """What an alignment report (`trainer.fold_in.align_rows`) of new `entity` rows says, for the summary line."""
    count = report[f"{entity}s"]
    if count:
        return f" {count:,} new {entity} rows placed by {report['method']} (scale {report['scale']:.2f});"
    return f" no {report['method']} {entity} map: {report['skipped']};" if "skipped" in report else ""


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
    placed = _placed(result.alignment, "item") + _placed(result.user_alignment, "user")
    print(f"folded {result.added['users']:,} users, {result.added['items']:,} items and "
          f"{result.added['interactions']:,} interactions into {out} in {sum(result.seconds.values()):.1f} s;{placed} "
          f"{losses} pyfunc: {result.pyfunc or 'not written'}")
    return 0


def add_model_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands evaluate, diagnose, recommend, export-embeddings, two-tower, export, fold-in and serve."""
    p = sub.add_parser("evaluate", help="evaluate a saved model on its dataset's validation or test split, or "
                       "(--cold-start) on the held-out items of its cold-start split")
    p.add_argument("--model", type=Path, required=True, help="saved model folder (<output_dir>/model)")
    p.add_argument("--split", default="test", choices=("val", "test"))
    add_evaluate_cold_start(p)
    p = sub.add_parser("diagnose", help="how user-specific a saved model's hidden states and item logits are")
    p.add_argument("--model", type=Path, required=True, help="saved model folder (<output_dir>/model)")
    p.add_argument("--split", default="val", choices=("val", "test"), help="users with items in this split (default val)")
    p.add_argument("--users", type=int, default=256, help="the first N such users, by index (default 256)")
    p.add_argument("--history-caps", type=int, nargs="*", default=[], metavar="N",
                   help="also evaluate every user of --split with at most N random training items in each prompt, for "
                   "each N given (0: the user rows alone): how much of the history the model uses")
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
    add_table_flags(p, "interactions of new users with known or new items", "new users: id and biography columns",
                     "new items: id and text columns (CSV, TSV, JSON lines, Parquet)",
                     "reviews of the new users' interactions (user, item, text), read as training reviews",
                     text_default="text")
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


MODEL_COMMANDS = {"evaluate": cmd_evaluate, "diagnose": cmd_diagnose, "recommend": cmd_recommend,
                  "export-embeddings": cmd_export_embeddings, "two-tower": cmd_two_tower, "export": cmd_export,
                  "fold-in": cmd_fold_in, "serve": cmd_serve}
