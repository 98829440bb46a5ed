"""The row-sharded engine (`distributed.table_sharding: rows`, trainer/rows_engine.py) on CPU ranks over
gloo: 1, 2 and 4 ranks train to the same losses, tables and metrics (and 1 rank to the plain engine's);
each rank holds its rows only; rankings, metrics and the logit user share of sharded tables equal the
whole tables'; a checkpoint resumes resharded on another number of ranks, and under another engine is
refused by name. The 2- and 4-rank runs start once (module fixture); the 1-rank one and the plain engine's
are the session's (conftest.py's `shared_runs`)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from launched_runs import ROWS, SCHEDULE, assert_same_run, results, run_training
from spawn_ranks import run_ranks
from trainer.checkpoint import CheckpointError
from trainer.config import ConfigError
from trainer.config_loading import load_config

pytestmark = pytest.mark.slow
SETTINGS = {**SCHEDULE, "checkpoint.keep": 1000}
TOP = 30


def _overrides(dataset: Path, backbone: Path, out: Path, **extra: object) -> list[str]:
    return tiny_overrides(dataset, backbone, out, **SETTINGS, **extra)


@dataclass
class Runs:
    plain: Path  # the plain engine, in this process
    ranks: dict[int, Path]  # row-sharded: 1 rank in a plain process, 2 and 4 under the DeepSpeed launcher


@pytest.fixture(scope="module")
def runs(planted_dataset, tiny_llama, shared_runs, tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("rows")
    for ranks in (2, 4):
        run_training(_overrides(planted_dataset, tiny_llama, root / f"rows{ranks}", **ROWS), ranks, root / f"{ranks}.log")
    return Runs(shared_runs.plain, {1: shared_runs.row_sharded, **{r: root / f"rows{r}" for r in (2, 4)}})


def test_two_and_four_ranks_equal_one_rank_and_the_plain_engine(runs: Runs) -> None:
    assert {r: results(out)["engine"] for r, out in runs.ranks.items()} == dict.fromkeys((1, 2, 4), "row-sharded")
    assert_same_run(runs.plain, runs.ranks[1])
    assert_same_run(runs.ranks[1], runs.ranks[2])
    assert_same_run(runs.ranks[1], runs.ranks[4])


def test_each_rank_holds_its_rows_of_every_table(runs: Runs) -> None:
    """With 4 ranks each optimizer holds a quarter of the four tables (80 users, 40 items, K = 32)."""
    ranks = results(runs.ranks[4])["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]
    assert [r["trainable_elements_on_rank"] for r in ranks] == [(2 * 20 + 2 * 10) * 32] * 4


def _sharded_scoring(comm, model_dir: str) -> dict:
    """In a spawned rank: the saved model's tables row-sharded; this rank's users' top items, and the
    validation metrics and logit user share (evaluation shards users over ranks, batches of 16)."""
    from trainer.distributed import Dist
    from trainer.rows_engine import RowShardedEngine
    from trainer.serving import load_saved

    config, parts, _ = load_saved(Path(model_dir))
    engine = RowShardedEngine(parts.model, 0.01, 0.01, dist=Dist(comm.rank, comm.world, comm.rank, active=True))
    return _scoring(engine, config, parts, np.arange(parts.dataset.n_users)[comm.rank :: comm.world])


def _scoring(engine, config, parts, users: np.ndarray) -> dict:
    from trainer.data import user_item_lists
    from trainer.evaluate import evaluate, scoring_prompt

    prompt = scoring_prompt(config)
    items, scores = engine.rank_items(parts.corpora.scoring_batch(users, prompt, config.seed), parts.corpora.train,
                                      users, TOP)
    metrics = evaluate(engine, parts.corpora, user_item_lists(parts.dataset, "val"), prompt=prompt, seed=config.seed,
                       batch_size=16, recall_ks=[5, 20], ndcg_ks=[10], progress=False, logit_share=True)
    return {"users": torch.from_numpy(users), "items": items, "scores": scores, "metrics": metrics}


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_rankings_and_metrics_equal_whole_tables(runs: Runs, world: int, tmp_path: Path) -> None:
    """The same model ranked with its tables row-sharded over 2 or 4 ranks and whole in one process: the
    same top items (ties by the lower item), scores within float rounding, the same validation metrics
    (users sharded, padding calls included) and logit user share."""
    from trainer.serving import load_saved

    model = runs.ranks[1] / "model"
    got = run_ranks(_sharded_scoring, world, tmp_path, str(model))
    config, parts, plain = load_saved(model)
    want = _scoring(plain, config, parts, np.arange(parts.dataset.n_users))
    order = torch.cat([g["users"] for g in got]).argsort()
    assert torch.equal(torch.cat([g["items"] for g in got])[order], want["items"])
    torch.testing.assert_close(torch.cat([g["scores"] for g in got])[order], want["scores"], rtol=1e-5, atol=1e-5)
    for g in got:
        assert g["metrics"].keys() == want["metrics"].keys()
        for key, value in want["metrics"].items():
            assert g["metrics"][key] == pytest.approx(value, abs=1e-9 if key != "logit_user_share" else 1e-6), key


def _tables_in_place(comm, model_dir: str, out: str, world_written: int) -> dict:
    """In a spawned rank: the saved model's tables row-sharded; this rank writes its rows into `out` (bytes
    any collective moved counted), reads back its rows of the same model written by `world_written` ranks,
    and makes token-like rows of its content user rows centred on the whole table's mean."""
    from cllm4rec.table_init import token_like_rows
    from trainer.distributed import Dist
    from trainer.rows_engine import RowShardedEngine
    from trainer.serving import load_saved

    _, parts, _ = load_saved(Path(model_dir))
    engine = RowShardedEngine(parts.model, 0.01, 0.01, dist=Dist(comm.rank, comm.world, comm.rank, active=True))
    engine.comm.reset()
    engine.save_tables(Path(out))
    moved = sum(engine.comm.received.values())
    written = Path(out).parent / f"written-by-{world_written}"
    own = {name: rows.clone() for name, rows in engine.own_rows().items()}
    engine.load_own_rows({name: torch.zeros_like(rows) for name, rows in own.items()})
    engine.restore_tables(written, None)
    rows = own["content_user"]
    words = parts.model.backbone.get_input_embeddings()
    return {"moved": moved, "restored": engine.own_rows(),
            "token_like": token_like_rows(rows, words, 0.25, engine.column_mean(rows))}


def test_tables_are_written_and_read_in_place_without_gathers(runs: Runs, tmp_path: Path) -> None:
    """The row-sharded engine writes checkpoints and models as each rank's rows (no collective moves a byte),
    reads its rows back from files that another number of ranks wrote, and centres `collab_from_content`'s
    token-like rows on the whole table's mean: the same rows as the whole table's in one process."""
    from cllm4rec.row_shards import RowShards
    from cllm4rec.table_init import token_like_rows
    from trainer.checkpoint import load_tables, table_files, write_table_rows
    from trainer.serving import load_saved

    model = runs.ranks[1] / "model"
    whole = load_tables(model)
    written = tmp_path / "written-by-3"
    written.mkdir()
    for rank in range(3):
        write_table_rows(written, {n: t[slice(*RowShards(t.shape[0], 3).range(rank))] for n, t in whole.items()}, rank, 3)
    (tmp_path / "out").mkdir()
    got = run_ranks(_tables_in_place, 2, tmp_path / "ranks", str(model), str(tmp_path / "out"), 3)
    assert [g["moved"] for g in got] == [0, 0]
    assert table_files(tmp_path / "out") == [f"tables-rows-r{r:04d}-of-0002.safetensors" for r in range(2)]
    written_by_two = load_tables(tmp_path / "out")
    for name, table in whole.items():
        assert torch.equal(written_by_two[name], table), name
        assert torch.equal(torch.cat([g["restored"][name] for g in got]), table), name
    _, parts, _ = load_saved(model)
    want = token_like_rows(whole["content_user"], parts.model.backbone.get_input_embeddings(), 0.25)
    torch.testing.assert_close(torch.cat([g["token_like"] for g in got]), want, rtol=1e-5, atol=1e-6)


def _resumable_copy(run: Path, dest: Path, phase: str) -> str:
    """A copy of a finished run's folder reduced to its first checkpoint inside a `phase` epoch (the
    position a crash there leaves behind); returns the checkpoint's tag."""
    shutil.copytree(run, dest)
    folders = sorted((dest / "checkpoints").glob("0*"), key=lambda p: (p / "COMPLETE").stat().st_mtime_ns)
    chosen = next(p for p in folders if phase in p.name and "-s0" in p.name)
    for folder in folders[folders.index(chosen) + 1 :]:
        shutil.rmtree(folder)
    (dest / "checkpoints" / "latest").write_text(chosen.name + "\n")
    for name in ("best", "model", "pyfunc", "results.json"):
        shutil.rmtree(dest / name) if (dest / name).is_dir() else (dest / name).unlink()
    return chosen.name


@pytest.mark.parametrize("ranks", [1, 4])
def test_a_checkpoint_of_two_ranks_resumes_resharded(runs: Runs, planted_dataset, tiny_llama, tmp_path: Path,
                                                     ranks: int) -> None:
    """Written by 2 ranks inside an L-step epoch, resumed on 1 or 4: each rank reads its own rows of the
    tables and of the Adam state from the 2 ranks' files, rank 0 takes the epoch's running sums; the run
    ends as the uninterrupted 2-rank run does (the cross-rank tolerance)."""
    out = tmp_path / "resumed"
    tag = _resumable_copy(runs.ranks[2], out, "lstep")
    log = tmp_path / "resume.log"
    run_training(["--resume", *_overrides(planted_dataset, tiny_llama, out, **ROWS)], ranks, log)
    assert f"resumed from {out / 'checkpoints' / tag}" in log.read_text()
    assert_same_run(runs.ranks[2], out)


def test_resume_under_another_engine_is_refused_by_name(runs: Runs, planted_dataset, tiny_llama, tmp_path: Path) -> None:
    from trainer.pipeline import train

    out = tmp_path / "run"
    shutil.copytree(runs.ranks[2], out)
    config = load_config("quick", _overrides(planted_dataset, tiny_llama, out, **{"distributed.engine": "plain"}))
    with pytest.raises(CheckpointError, match=r"engine: checkpoint has row-sharded, current run has plain"):
        train(config, start="resume", progress=False)


def test_row_sharding_refuses_a_trained_backbone(planted_dataset, tiny_llama, tmp_path: Path) -> None:
    from trainer.distributed import LOCAL
    from trainer.engine_setup import build_engine

    config = load_config("quick", [*_overrides(planted_dataset, tiny_llama, tmp_path, **ROWS), "ablation=ftall-lora"])
    with pytest.raises(ConfigError, match=r"model.train_backbone=lora \(ablation=ftall-lora\).*table_sharding=zero3"):
        build_engine(config, LOCAL, None, torch.device("cpu"), None, {})


def test_export_from_a_row_sharded_checkpoint(runs: Runs, tmp_path: Path) -> None:
    """`cllm4rec export` of a row-sharded run: its checkpoints and model hold each rank's rows in a file of
    its own; the exported model keeps those files and needs neither the ranks nor their optimizer files."""
    from trainer.checkpoint import load_checkpoint, load_model, resolve_checkpoint, table_files
    from trainer.cli import main

    assert main(["export", str(runs.ranks[4]), "--out", str(tmp_path / "exported")]) == 0
    shards = [f"tables-rows-r{r:04d}-of-0004.safetensors" for r in range(4)]
    saved = load_checkpoint(resolve_checkpoint(runs.ranks[4]))
    assert table_files(saved.path) == table_files(runs.ranks[4] / "model") == table_files(tmp_path / "exported") == shards
    assert sorted(p.name for p in saved.path.glob("optimizer-rows-*.json")) == [
        f"optimizer-rows-r{r:04d}-of-0004.json" for r in range(4)]
    exported = load_model(tmp_path / "exported").tables
    assert exported.keys() == saved.tables.keys() and all(torch.equal(exported[n], saved.tables[n]) for n in exported)
