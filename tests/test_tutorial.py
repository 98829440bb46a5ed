"""docs/tutorial.md stays true: its synthetic Amazon sample, the dataset it prepares, its commands and recipe.

No backbone and no training: the sample is written, read and prepared (a second), and every
`cllm4rec …` line of the tutorial's bash blocks is parsed by the real command-line parser.
"""
from __future__ import annotations

import ast
import gzip
import json
import re
import shlex
import textwrap
from pathlib import Path

import pytest

from data_prep.prepare import prepare, summary
from data_prep.processed import read_meta
from data_prep.readers import read_amazon
from data_prep.synthetic_amazon import write_sample
from trainer.cli import build_parser
from trainer.config_loading import load_config

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
RECIPE = ROOT / "docs" / "tutorial" / "beauty-sample.yaml"
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>&1"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, Path]:
    return write_sample(tmp_path_factory.mktemp("raw"))


def _bash_commands(text: str) -> list[str]:
    """Every command line of the ```bash blocks, with backslash continuations joined."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = textwrap.dedent(block)
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line)
    return commands


def _cllm4rec_argv(command: str) -> list[str] | None:
    """The arguments after `cllm4rec` (or `.venv/bin/cllm4rec`) up to the first shell operator."""
    words = shlex.split(command, comments=True)
    starts = [i for i, w in enumerate(words) if w == "cllm4rec" or w.endswith("/cllm4rec")]
    if not starts:
        return None
    argv = []
    for word in words[starts[0] + 1:]:
        if word in SHELL_OPERATORS:
            break
        argv.append(word)
    return argv


def test_sample_is_deterministic_and_in_the_2014_format(sample, tmp_path: Path) -> None:
    again = write_sample(tmp_path / "again")
    assert [p.name for p in sample] == ["reviews_Beauty_5.json.gz", "meta_Beauty.json.gz"]
    assert [p.read_bytes() for p in sample] == [p.read_bytes() for p in again]
    other = write_sample(tmp_path / "seed1", seed=1)
    assert sample[0].read_bytes() != other[0].read_bytes()

    reviews = gzip.decompress(sample[0].read_bytes()).decode().splitlines()
    first = json.loads(reviews[0])
    assert list(first) == ["reviewerID", "asin", "reviewerName", "helpful", "reviewText", "overall", "summary",
                           "unixReviewTime", "reviewTime"]
    meta = gzip.decompress(sample[1].read_bytes()).decode().splitlines()
    assert meta[0].startswith("{'asin': 'B00")  # a Python dict literal, not JSON
    record = ast.literal_eval(meta[0])
    assert {"asin", "title", "brand", "categories", "description"} <= set(record)
    assert len(reviews) == 2560 and len(meta) == 170


def test_prepared_sample_matches_the_tutorial(sample, tmp_path: Path) -> None:
    raw = read_amazon(*sample, name="beauty-sample")
    assert len(raw.user_ids) == 320 and len(raw.item_ids) == 150 and raw.n_interactions == 2560
    out = tmp_path / "beauty-sample"
    prepare(raw, out)  # the Amazon default: 5-core, split seed 0
    meta = read_meta(out)
    assert meta["kcore"] == 5
    counts = {k: meta["counts"][k] for k in ("users", "items", "interactions", "train", "val", "test", "reviews")}
    assert counts == {"users": 299, "items": 147, "interactions": 2477, "train": 1879, "val": 299, "test": 299,
                      "reviews": 1879}
    tutorial = TUTORIAL.read_text(encoding="utf-8")
    for line in summary(meta).splitlines()[1:]:  # what `cllm4rec info` prints, less the path line
        assert line in tutorial, f"docs/tutorial.md does not show the `info` line {line!r}"


def test_every_cllm4rec_command_of_the_tutorial_parses() -> None:
    parser = build_parser()
    commands = [argv for argv in map(_cllm4rec_argv, _bash_commands(TUTORIAL.read_text(encoding="utf-8"))) if argv]
    seen = set()
    for argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"`cllm4rec {shlex.join(argv)}` does not parse")
        seen.add(args.command)
        if args.command == "train":  # the recipe and overrides resolve to a valid config (no training)
            load_config(args.recipe, args.overrides)
    assert {"prepare", "info", "train", "evaluate", "recommend", "export-embeddings", "two-tower"} <= seen
    subcommands = set(parser._subparsers._group_actions[0].choices)  # every subcommand the prose names, too
    named = set(re.findall(r"\bcllm4rec ([a-z][a-z-]*)", TUTORIAL.read_text(encoding="utf-8")))
    assert named and named <= subcommands, named - subcommands


def test_tutorial_recipe_is_the_file_it_shows() -> None:
    tutorial = TUTORIAL.read_text(encoding="utf-8")
    assert RECIPE.read_text(encoding="utf-8") in tutorial
    config = load_config(str(RECIPE))
    assert config.data.dataset == "/tmp/tutorial-work/datasets/beauty-sample"
    assert config.output_dir == "/tmp/tutorial-work/runs/{name}"


def _mlflow_ports(command: str) -> tuple[str, int, str] | None:
    """(`ui` or `serve`, port, host) of an `mlflow ui|server` or `mlflow models serve` command; MLflow's
    defaults are -p 5000 and -h 127.0.0.1."""
    words = command.split()
    if "mlflow" not in words:
        return None
    rest = words[words.index("mlflow") + 1:]
    kind = "ui" if rest[:1] in (["ui"], ["server"]) else "serve" if rest[:2] == ["models", "serve"] else None
    if kind is None:
        return None

    def option(short: str, long: str, default: str) -> str:
        for i, word in enumerate(rest[:-1]):
            if word in (short, long):
                return rest[i + 1]
        return default
    return kind, int(option("-p", "--port", "5000")), option("-h", "--host", "127.0.0.1")


def test_model_server_and_mlflow_ui_use_different_ports_and_stay_local() -> None:
    """Every `mlflow models serve` the docs show (commands and the `or with MLflow:` line `train` prints, as
    the tutorial's transcript has it) names a port apart from every `mlflow ui` port, and none binds
    beyond 127.0.0.1."""
    found = []
    for doc in (ROOT / "README.md", TUTORIAL, ROOT / "docs" / "cluster.md"):
        for line in doc.read_text(encoding="utf-8").splitlines():
            command = line.strip("` ")
            ports = _mlflow_ports(command.split("`")[0])
            if ports:
                found.append((doc.name, *ports))
    ui = {port for _, kind, port, _ in found if kind == "ui"}
    serve = {port for _, kind, port, _ in found if kind == "serve"}
    assert ui and serve and not ui & serve, found
    assert all(host == "127.0.0.1" for *_, host in found), found
    transcript = [line for line in TUTORIAL.read_text(encoding="utf-8").splitlines() if line.startswith("or with MLflow: ")]
    assert len(transcript) == 1 and transcript[0].endswith(" -p 5001")  # what `TrainingRun.run` prints
