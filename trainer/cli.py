"""The `cllm4rec` command line: one subcommand per job (prepare, fetch-backbone, info, demo, ...).

The training commands live here (train, demo, sweep, reproduce, config); the data commands in
trainer/cli_data.py, those that use a trained model in trainer/cli_model.py. Errors in user input
(`DataPrepError`, `AssetFetchError`, config errors) end with a one-line message and exit code 2, never
a traceback; anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cllm4rec.backbone import BackboneError
from data_prep.errors import AssetFetchError, DataPrepError
from trainer.ablations import reproduce_defaults
from trainer.checkpoint import CheckpointError
from trainer.cli_data import DATA_COMMANDS, add_data_parsers
from trainer.cli_model import MODEL_COMMANDS, add_model_parsers
from trainer.config import ConfigError
from trainer.config_loading import shipped_recipes

USER_ERRORS: tuple[type[Exception], ...] = (DataPrepError, AssetFetchError, ConfigError, CheckpointError, BackboneError)
RECIPE_HELP = f"shipped recipe ({', '.join(shipped_recipes())}) or a YAML file"


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.config_loading import load_config
    from trainer.pipeline import train

    from trainer.distributed import leaving_process_group

    config = load_config(args.recipe, args.overrides)
    if args.init_from is not None:
        config.incremental.init_from = str(args.init_from)
    with leaving_process_group():
        train(config, start=args.start, progress=not args.no_progress)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the `quick` recipe on ML-100K + SmolLM2-135M (prepared and fetched on demand)."""
    return cmd_train(argparse.Namespace(recipe="quick", overrides=args.overrides, start=args.start,
                                        no_progress=args.no_progress, init_from=None))


def cmd_sweep(args: argparse.Namespace) -> int:
    """One training per value of a config key, under one MLflow parent run, plus the sensitivity plot."""
    from trainer.distributed import leaving_process_group
    from trainer.sweep import parse_sweep, sweep

    key, values = parse_sweep(args.sweep)
    with leaving_process_group():
        sweep(key, values, args.recipe, args.overrides, start=args.start, progress=not args.no_progress)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Every row of the paper's comparison on one dataset and split; table.md/json/png beside the runs."""
    from trainer.distributed import leaving_process_group
    from trainer.reproduce import reproduce

    ablations = tuple(a.strip() for a in args.ablations.split(",") if a.strip())
    with leaving_process_group():
        reproduce(args.recipe, args.overrides, ablations=ablations, two_tower_epochs=args.two_tower_epochs,
                  start=args.start, progress=not args.no_progress)
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

    from trainer.config import config_to_dict
    from trainer.config_loading import load_config

    print(yaml.safe_dump(config_to_dict(load_config(args.recipe, args.overrides)), sort_keys=False, allow_unicode=True), end="")
    return 0


def cmd_plan_memory(args: argparse.Namespace) -> int:
    """The bytes each rank of a run would hold, term by term, against the memory a rank has; exit status 1 when
    the run would not fit (docs/cluster.md, section 3.1)."""
    from trainer.config_loading import load_config
    from trainer.memory_check import plan_command

    if (args.users is None) != (args.items is None):
        raise ConfigError("--users and --items go together (a catalogue instead of the dataset's)")
    if min(args.ranks, args.users or 1, args.items or 1) < 1:
        raise ConfigError("--ranks, --users and --items must be at least 1")
    config = load_config(args.recipe, args.overrides)
    catalogue = None if args.users is None else (args.users, args.items)
    table, fits = plan_command(config, args.ranks, catalogue, gpu_gib=args.gpu_memory, host_gib=args.host_memory)
    print(table)
    return 0 if fits else 1


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
    p.add_argument("--recipe", default="quick", help=RECIPE_HELP)
    _add_start_flags(p, rows=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help=f"config overrides shared by every {unit}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cllm4rec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_parsers(sub)
    for name, help_text in (("train", "train CLLM4Rec (recipe + key=value overrides)"),
                            ("demo", "the main job: the quick recipe on ML-100K + SmolLM2-135M")):
        p = sub.add_parser(name, help=help_text)
        if name == "train":
            p.add_argument("--recipe", default="quick", help=RECIPE_HELP)
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
    p.add_argument("--recipe", help=RECIPE_HELP + " (default: none, the defaults)")
    p.add_argument("--reference", action="store_true", help="print the configuration reference (Markdown) instead")
    p.add_argument("--update", type=Path, help="with --reference: rewrite the generated part of this file (docs/configuration.md)")
    p.add_argument("overrides", nargs="*", help="config overrides such as pretrain.lambda_c=0.5")
    p = sub.add_parser("plan-memory", help="the memory each rank of a run would hold, term by term, without training "
                       "(exit status 1 when it would not fit)")
    p.add_argument("--recipe", default="quick", help=RECIPE_HELP)
    p.add_argument("--ranks", type=int, default=1, help="ranks (world size) to plan for (default 1)")
    p.add_argument("--users", type=int, help="plan for this many users (with --items) instead of the dataset's")
    p.add_argument("--items", type=int, help="plan for this many items (with --users)")
    p.add_argument("--gpu-memory", type=float, metavar="GIB", help="GPU memory each rank has (default: the free "
                   "memory of this machine's GPU)")
    p.add_argument("--host-memory", type=float, metavar="GIB", help="host memory each rank has (default: this "
                   "machine's available memory divided by --ranks)")
    p.add_argument("overrides", nargs="*", help="config overrides such as device=cuda distributed.table_sharding=rows")
    add_model_parsers(sub)
    return parser


COMMANDS = {**DATA_COMMANDS, "train": cmd_train, "demo": cmd_demo, "sweep": cmd_sweep, "reproduce": cmd_reproduce,
            "config": cmd_config, "plan-memory": cmd_plan_memory, **MODEL_COMMANDS}


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
