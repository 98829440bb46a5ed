"""Incremental training (`cllm4rec train --init-from`): a model trained on an earlier snapshot starts the run on
the dataset prepared again later; kept rows carried bit-identical, new ids folded in, removed ones dropped.

The module shares one later dataset (the planted one with 42 items), its earlier snapshot
(data_prep/snapshot.py: the later training interactions less 10%, less 5% of the items and 5% of the
users, plus two users and three items the later data no longer has) and three runs of the quick recipe
with the tiny LLaMA: "earlier" and "scratch" (benchmarks/incremental.py's `train_run`: 2 warm-up epochs,
3 rounds, 8 finetuning epochs) and "warm" (through the CLI: --init-from the earlier run, 3 finetuning
epochs only).
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import load_script, planted_raw, tiny_overrides
from data_prep.prepare import prepare
from data_prep.processed import load_processed
from data_prep.raw import RawBuilder
from data_prep.snapshot import snapshot_builder
from trainer import checkpoint as ckpt
from trainer import cli
from trainer.config_loading import load_config
from trainer.id_mapping import earlier_rows
from trainer.pipeline import TrainingRun

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RECIPE = {"pretrain.warmup_epochs": 2, "pretrain.rounds": 3, "finetune.epochs": 8, "finetune.patience": 8,
          "data.reviews": False, "baselines.mostpop": False, "baselines.multivae": False, "baselines.ease": False,
          "eval.recall_ks": "[5,10]", "eval.ndcg_ks": "[10]"}
WARM = {**RECIPE, "pretrain.warmup_epochs": 0, "pretrain.rounds": 0, "finetune.epochs": 3}
GONE = {"users": ["gone0", "gone1"], "items": ["retired0", "retired1", "retired2"]}


def add_removed(builder: RawBuilder) -> None:
    """Two users and three items that only the earlier snapshot has (removed since)."""
    for user in GONE["users"]:
        for k, item in enumerate(GONE["items"]):
            builder.add_interaction(user, item, 900 + k)
            builder.set_item_text(item, "a comedy about cats")
        builder.set_user_text(user, "a user who loves comedy about cats")


@dataclass
class Runs:
    root: Path
    later: Path
    earlier_data: Path
    earlier: Path
    scratch: Path
    warm: Path
    stdout: str
    tracking_uri: str


@pytest.fixture(scope="module")
def bench():
    return load_script("incremental", "benchmarks")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama, bench) -> Runs:
    root = tmp_path_factory.mktemp("incremental")
    prepare(planted_raw(n_items=42), root / "later", seed=0)
    builder = snapshot_builder(load_processed(root / "later"), interactions=0.1, items=0.05, users=0.05)
    add_removed(builder)
    prepare(builder.build(), root / "earlier-data", seed=0)
    earlier = bench.train_run(root / "earlier", root / "earlier-data", "quick", tiny_overrides(root, tiny_llama, root, **RECIPE))
    scratch = bench.train_run(root / "scratch", root / "later", "quick", tiny_overrides(root, tiny_llama, root, **RECIPE))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    args = tiny_overrides(root / "later", tiny_llama, root / "warm", **WARM, **{"tracking.mlflow": True,
                                                                               "tracking.tracking_uri": uri})
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli.main(["train", "--init-from", str(earlier), "--no-progress", *args]) == 0
    return Runs(root, root / "later", root / "earlier-data", earlier, scratch, root / "warm", stdout.getvalue(), uri)


def expected_counts(runs: Runs) -> dict[str, dict[str, int]]:
    earlier, later = load_processed(runs.earlier_data), load_processed(runs.later)
    counts = {}
    for kind, old, new in (("users", earlier.user_raw, later.user_raw), ("items", earlier.item_raw, later.item_raw)):
        counts[kind] = {"kept": len(set(old) & set(new)), "new": len(set(new) - set(old)), "removed": len(set(old) - set(new))}
    return counts


def test_the_mapping_is_printed_logged_and_saved(runs: Runs) -> None:
    from mlflow import MlflowClient

    report = json.loads((runs.warm / "init_from.json").read_text())
    counts = expected_counts(runs)
    assert report["counts"] == counts and report["removed"] == GONE
    assert counts["items"]["new"] == 2 and counts["users"]["new"] >= 4 and counts["users"]["kept"] >= 70
    assert report["source"]["model"] == str((runs.earlier / "model").resolve())
    assert len(report["fold_in"]["content_loss"]) == 5
    assert f"users {counts['users']['kept']} kept, {counts['users']['new']} new, 2 removed; items " \
           f"{counts['items']['kept']} kept, 2 new, 3 removed" in runs.stdout
    client = MlflowClient(runs.tracking_uri)
    (run,) = [r for r in client.search_runs(client.get_experiment_by_name("cllm4rec").experiment_id)
              if "mlflow.parentRunId" not in r.data.tags]
    params = run.data.params
    assert params["init_from.users.removed"] == "2" and params["init_from.items.new"] == "2"
    assert params["incremental.init_from"] == str(runs.earlier)
    (source,) = run.inputs.dataset_inputs
    assert source.dataset.source == report["source"]["model"] and json.loads(source.dataset.profile) == counts


@pytest.mark.parametrize("align", ["none", "ridge"])
def test_carried_rows_are_bit_identical_right_after_init(runs: Runs, tiny_llama, align: str) -> None:
    config = load_config("quick", tiny_overrides(runs.later, tiny_llama, runs.root / "unused", **WARM,
                                                 **{"incremental.align": align}))
    config.incremental.init_from = str(runs.earlier)
    run = TrainingRun(config, progress=False)
    tables = run.engine.full_tables()  # initialised, not trained
    before = load_file(str(runs.earlier / "model" / ckpt.TABLES))
    earlier, later = load_processed(runs.earlier_data), load_processed(runs.later)
    rows = {"user": earlier_rows(earlier.user_raw, later.user_raw), "item": earlier_rows(earlier.item_raw, later.item_raw)}
    for name, table in tables.items():
        kind = name.split("_")[1]
        kept = torch.as_tensor(rows[kind] >= 0)
        assert table.shape[0] == len(rows[kind])
        assert torch.equal(table[kept], before[name][torch.as_tensor(rows[kind][rows[kind] >= 0])]), name
    new_items = torch.as_tensor(rows["item"] < 0)
    centroid = before["content_item"].mean(dim=0)
    assert bool(((tables["content_item"][new_items] - centroid).norm(dim=1) > 1e-4).all())  # read from their text
    new_users = torch.as_tensor(rows["user"] < 0)
    assert torch.equal(tables["collab_user"][new_users], tables["content_user"][new_users])  # the MR prior's mean
    placed = (tables["collab_item"][new_items] - tables["content_item"][new_items]).norm(dim=1) > 1e-3
    assert placed.tolist() == [align == "ridge"] * 2  # else the MR prior's mean too
    alignment = run.warm_start.report()["fold_in"]["alignment"]
    assert alignment["method"] == align and alignment["items"] == (2 if align == "ridge" else 0)


def test_warm_start_reaches_scratch_quality_in_fewer_epochs(runs: Runs, bench) -> None:
    report = bench.compare({"earlier": runs.earlier, "scratch": runs.scratch, "warm": runs.warm}, 0.02, 5)
    print(bench.table(report))
    scratch, warm = report["runs"]["scratch"]["reach"], report["runs"]["warm"]["reach"]
    assert warm is not None and warm[1] <= 2, report  # the scratch run's best (less 2%) within 2 finetuning epochs
    assert scratch[1] >= 2 * warm[1] and scratch[0] >= 4 * warm[0], report  # it needed at least twice as many
    assert report["new_items"]["warm"] >= 1, report  # a new item is in some user's top 5


def test_resume_keeps_the_checkpoint_and_reads_no_init_source(runs: Runs, tiny_llama, tmp_path: Path) -> None:
    """Two epochs, then --resume to three with --init-from naming nothing: the same run as three epochs at once."""
    out = tmp_path / "warm"
    args = tiny_overrides(runs.later, tiny_llama, out, **{**WARM, "finetune.epochs": 2})
    assert cli.main(["train", "--init-from", str(runs.earlier), "--no-progress", *args]) == 0
    written = (out / "init_from.json").read_bytes()
    assert cli.main(["train", "--init-from", str(tmp_path / "nothing"), "--resume", "--no-progress", *args,
                     "finetune.epochs=3"]) == 0
    assert (out / "init_from.json").read_bytes() == written
    for name, table in load_file(str(runs.warm / "model" / ckpt.TABLES)).items():
        assert torch.equal(load_file(str(out / "model" / ckpt.TABLES))[name], table), name
    resumed, uninterrupted = ([h["val_selection"] for h in json.loads((folder / "results.json").read_text())["history"]]
                              for folder in (out, runs.warm))
    assert resumed == uninterrupted and len(resumed) == 3


def test_two_deepspeed_ranks_start_from_the_same_rows(runs: Runs, tiny_llama, tmp_path: Path) -> None:
    from launched_runs import run_training

    out = tmp_path / "warm-ds"
    args = tiny_overrides(runs.later, tiny_llama, out, **{**WARM, "finetune.epochs": 1, "distributed.engine": "deepspeed"})
    run_training(["--init-from", str(runs.earlier), *args], 2, tmp_path / "ds.log")
    ds, plain = (json.loads((folder / "results.json").read_text()) for folder in (out, runs.warm))
    assert ds["engine"] == "deepspeed-zero3 x2"
    for key, value in plain["history"][0].items():
        if key.endswith(("lm_loss", "mr_loss", "val_selection")):
            assert ds["history"][0][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    reports = [json.loads((folder / "init_from.json").read_text()) for folder in (out, runs.warm)]
    assert reports[0]["counts"] == reports[1]["counts"]
    assert reports[0]["fold_in"]["content_loss"] == pytest.approx(reports[1]["fold_in"]["content_loss"], rel=1e-6)


def test_two_row_sharded_ranks_fold_in_together_and_train_as_one(runs: Runs, tiny_llama, tmp_path: Path) -> None:
    """`distributed.table_sharding: rows`: each rank builds only its rows, reads its kept rows from the earlier
    model's files by index and folds the new ids in with the other rank (no whole table anywhere); the first
    epoch equals the plain warm run's (the same tolerance as the DeepSpeed test above)."""
    from launched_runs import ROWS, run_training

    out = tmp_path / "warm-rows"
    args = tiny_overrides(runs.later, tiny_llama, out, **{**WARM, "finetune.epochs": 1, **ROWS})
    run_training(["--init-from", str(runs.earlier), *args], 2, tmp_path / "rows.log")
    rows, plain = (json.loads((folder / "results.json").read_text()) for folder in (out, runs.warm))
    assert rows["engine"] == "row-sharded"
    assert "building the whole model" not in (tmp_path / "rows.log").read_text()
    assert ckpt.table_files(out / "model") == [ckpt.table_shard_name(rank, 2) for rank in range(2)]
    for key, value in plain["history"][0].items():
        if key.endswith(("lm_loss", "mr_loss", "val_selection")):
            assert rows["history"][0][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    reports = [json.loads((folder / "init_from.json").read_text()) for folder in (out, runs.warm)]
    assert reports[0]["counts"] == reports[1]["counts"] and reports[0]["fold_in"]["content_loss"]
    assert reports[0]["fold_in"]["content_loss"] == pytest.approx(reports[1]["fold_in"]["content_loss"], rel=1e-5)


def test_row_sharded_init_from_refuses_an_alignment(runs: Runs, tiny_llama, tmp_path: Path) -> None:
    """An alignment map is fitted on whole tables: refused with row-sharded tables, by key, before a row moves."""
    from cllm4rec.row_shards import RowSlices
    from trainer.build import build_run
    from trainer.config import ConfigError
    from trainer.distributed import LOCAL
    from trainer.incremental import warm_start

    config = load_config("quick", tiny_overrides(runs.later, tiny_llama, tmp_path / "aligned", **WARM))
    config.incremental.init_from, config.incremental.align = str(runs.earlier), "ridge"
    parts = build_run(config, layout=RowSlices(0, 1))
    before = parts.model.collab_item.detach().clone()
    with pytest.raises(ConfigError, match=r"incremental.align=ridge .* set incremental.align=none"):
        warm_start(config, parts, LOCAL)
    assert torch.equal(parts.model.collab_item.detach(), before)


def test_webdataset_shards_get_the_same_init_and_train(runs: Runs, tiny_llama, tmp_path: Path) -> None:
    from data_prep.shards import write_shards

    write_shards(runs.later, tmp_path / "shards", samples_per_shard=16)
    training_runs = []
    for shards in (None, tmp_path / "shards"):
        config = load_config("quick", tiny_overrides(runs.later, tiny_llama, tmp_path / f"run-{shards is None}",
                                                  **{**WARM, "finetune.epochs": 1}))
        config.incremental.init_from = str(runs.earlier)
        config.data.shards = str(shards) if shards else None
        training_runs.append(TrainingRun(config, progress=False))
    in_memory, sharded = (training_run.engine.full_tables() for training_run in training_runs)
    assert all(torch.equal(sharded[name], in_memory[name]) for name in in_memory)
    sharded_run = training_runs[1]
    sharded_run.run()
    assert [h["unit"] for h in sharded_run.state["history"]] == ["finetune-r000-e000"]
    assert (sharded_run.out / "init_from.json").is_file() and (sharded_run.out / "model" / ckpt.COMPLETE).is_file()


# ---- refusals: before any training, naming the difference; nothing written --------------------------------

def altered_model(runs: Runs, out: Path, tables=lambda t: t, identity: dict | None = None) -> Path:
    """A copy of the earlier model with its tables and identity changed (checksums rewritten)."""
    saved = ckpt.load_model(runs.earlier / "model")
    return ckpt.save_model(out, {k: tables(v) for k, v in saved.tables.items()}, saved.config,
                           {**saved.identity, **(identity or {})})


def renamed_raw(prefix: str):
    """The planted raw data with every raw id prefixed: the same shape, no id in common."""
    raw = planted_raw()
    raw.user_ids, raw.item_ids = [prefix + r for r in raw.user_ids], [prefix + r for r in raw.item_ids]
    raw.user_text = {prefix + k: v for k, v in raw.user_text.items()}
    raw.item_text = {prefix + k: v for k, v in raw.item_text.items()}
    return raw


@pytest.mark.parametrize("change, message", [
    ("backbone", r"backbone: the earlier model has '.*tiny-llama.*', this run has '.*tiny-gpt2.*'; tokenizer: "),
    ("k", r"K \(hidden size, the tables' width\): the earlier model has 16, this run has 32"),
    ("layout", r"ID token layout \(the first ID token, V = the backbone's vocabulary rows\): the earlier model has 9,"),
    ("dataset", r"the dataset it was trained on, .*earlier-data, is changed since"),
    ("run", r"a run folder without a final model"),
    ("nothing in common", r"no user or item id in common"),
    ("missing", r"nowhere: .*nowhere: not found"),
], ids=["backbone", "k", "layout", "dataset", "run", "nothing-in-common", "missing"])
def test_incompatible_sources_are_refused_naming_the_difference(runs: Runs, tiny_llama, tiny_gpt2, tmp_path: Path,
                                                                  change: str, message: str, capsys) -> None:
    """Refused before anything trains, in one line; the run an --overwrite would have replaced stays whole."""
    backbone, dataset, source = tiny_llama, runs.later, runs.earlier
    if change == "backbone":
        backbone = tiny_gpt2
    elif change == "k":
        source = altered_model(runs, tmp_path / "model", tables=lambda t: t[:, :16].contiguous())
    elif change in ("layout", "dataset"):
        key, value = ("vocab_rows", 9) if change == "layout" else ("dataset_hash", "0" * 64)
        source = altered_model(runs, tmp_path / "model", identity={key: value})
    elif change == "run":
        source = tmp_path / "run"
        shutil.copytree(runs.earlier, source, ignore=shutil.ignore_patterns("model"))
    elif change == "missing":
        source = tmp_path / "nowhere"
    else:
        dataset = tmp_path / "other"
        prepare(renamed_raw("x"), dataset, seed=0)
    out = tmp_path / "out"
    shutil.copytree(runs.scratch, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    args = tiny_overrides(dataset, backbone, out, **WARM)
    assert cli.main(["train", "--init-from", str(source), "--overwrite", "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (lines above: the backbone's loading bar)
    assert err.startswith("cllm4rec train: error: --init-from ") and re.search(message, err), err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
