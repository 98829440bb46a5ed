"""Checkpoints and saved models: exact round trips, checksums, pointers, identity, pruning, crash safety."""
from __future__ import annotations

import ast
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import trainer.checkpoint as ckpt
from trainer.checkpoint import (CheckpointError, check_identity, config_hash, find_latest, load_checkpoint,
                                load_model, prune_checkpoints, restore_optimizer, save_checkpoint,
                                save_model, save_optimizer)

CONFIG = {"pretrain": {"rounds": 3, "lr": 0.001}, "finetune": {"epochs": 2}, "model": {"backbone": "tiny"}}
IDENTITY = {"config_hash": "c0", "dataset_hash": "d0", "backbone": "tiny", "n_users": 4, "n_items": 5}


def _build(seed: int = 0) -> tuple[dict[str, torch.nn.Parameter], dict[str, torch.optim.Optimizer]]:
    """Two parameter sets, each with its own Adam (one with two groups and amsgrad)."""
    gen = torch.Generator().manual_seed(seed)
    params = {name: torch.nn.Parameter(torch.randn(shape, generator=gen))
              for name, shape in {"user": (4, 3), "item": (5, 3), "bias": (5,)}.items()}
    optimizers = {
        "collab": torch.optim.Adam([params["user"]], lr=1e-2, betas=(0.8, 0.95)),
        "content": torch.optim.Adam([{"params": [params["item"]]}, {"params": [params["bias"]], "lr": 3e-3}],
                                    lr=1e-2, amsgrad=True, weight_decay=0.01),
    }
    return params, optimizers


def _train_step(params: dict[str, torch.nn.Parameter], optimizers: dict[str, torch.optim.Optimizer], k: int) -> None:
    for optimizer in optimizers.values():
        optimizer.zero_grad()
    loss = ((params["user"] @ params["item"].T).sin() * (k + 1)).sum() + (params["bias"] ** 3).sum()
    loss.backward()
    for optimizer in optimizers.values():
        optimizer.step()


def _writer(optimizers: dict[str, torch.optim.Optimizer]):
    def write(folder: Path) -> None:
        for name, optimizer in optimizers.items():
            save_optimizer(folder, name, optimizer)
    return write


def _tables(tables: dict[str, torch.Tensor]):
    """An engine's `save_tables` for whole tables in one process."""
    return lambda folder: ckpt.write_tables(folder, dict(tables))


def _save(root: Path, tag: str, state: dict | None = None) -> Path:
    params, optimizers = _build()
    return save_checkpoint(root, tag, write_tables=_tables(params), write_optimizer=_writer(optimizers),
                           state=state or {"epoch": tag}, config=CONFIG, identity=IDENTITY)


def test_round_trip_is_bit_identical(tmp_path: Path) -> None:
    params, optimizers = _build()
    for k in range(3):
        _train_step(params, optimizers, k)
    extra = {"lora.A": torch.randn(2, 3, dtype=torch.bfloat16)}
    path = save_checkpoint(tmp_path, "epoch-3", write_tables=_tables(params), write_optimizer=_writer(optimizers),
                           state={"phase": "pretrain", "epoch": 3}, config=CONFIG, identity=IDENTITY,
                           extra_tensors=extra)

    loaded = load_checkpoint(path)
    assert loaded.state == {"phase": "pretrain", "epoch": 3}
    assert loaded.config == CONFIG and loaded.identity == IDENTITY
    assert torch.equal(loaded.extra["lora.A"], extra["lora.A"]) and loaded.extra["lora.A"].dtype == torch.bfloat16
    fresh, fresh_optimizers = _build(seed=1)
    with torch.no_grad():
        for name, param in fresh.items():
            assert loaded.tables[name].dtype == torch.float32
            param.copy_(loaded.tables[name])
    for name, optimizer in fresh_optimizers.items():
        restore_optimizer(loaded.path, name, optimizer)
    assert fresh_optimizers["collab"].param_groups[0]["betas"] == (0.8, 0.95)
    assert fresh_optimizers["content"].param_groups[1]["lr"] == 3e-3

    _train_step(params, optimizers, 3)
    _train_step(fresh, fresh_optimizers, 3)
    for name in params:
        assert torch.equal(params[name], fresh[name]), name


def test_restore_rejects_mismatched_optimizer(tmp_path: Path) -> None:
    loaded = load_checkpoint(_save(tmp_path, "e1"))
    wrong = torch.optim.Adam([torch.nn.Parameter(torch.zeros(7, 3))])
    with pytest.raises(CheckpointError, match="optimizer 'collab'"):
        restore_optimizer(loaded.path, "collab", wrong)
    with pytest.raises(CheckpointError, match="no optimizer 'other'"):
        restore_optimizer(loaded.path, "other", wrong)


@pytest.mark.parametrize("damage", ["drop_complete", "flip_byte"])
def test_damaged_checkpoint_ignored_and_rejected(tmp_path: Path, damage: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    good = _save(tmp_path, "e1")
    bad = _save(tmp_path, "e2")
    if damage == "drop_complete":
        (bad / "COMPLETE").unlink()
        culprit = "COMPLETE"
    else:
        culprit = "optimizer-content.safetensors"
        data = bytearray((bad / culprit).read_bytes())
        data[-1] ^= 0xFF
        (bad / culprit).write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert find_latest(tmp_path) == good
    assert "e2" in caplog.text
    with pytest.raises(CheckpointError, match=re.escape(str(bad / culprit))):
        load_checkpoint(bad)


def test_latest_pointer_followed(tmp_path: Path) -> None:
    assert find_latest(tmp_path) is None
    _save(tmp_path, "e1")
    second = _save(tmp_path, "e2")
    assert (tmp_path / "latest").read_text().strip() == "e2"
    assert find_latest(tmp_path) == second
    (tmp_path / "latest").write_text("e1\n")
    assert find_latest(tmp_path) == tmp_path / "e1"
    (tmp_path / "latest").write_text("gone\n")
    assert find_latest(tmp_path) == second


def test_identity_mismatch_names_key_and_values() -> None:
    check_identity(IDENTITY, dict(IDENTITY))
    current = {**IDENTITY, "dataset_hash": "d1", "n_items": 6}
    with pytest.raises(CheckpointError) as info:
        check_identity(IDENTITY, current)
    message = str(info.value)
    assert "dataset_hash: checkpoint has d0, current run has d1" in message
    assert "n_items: checkpoint has 5, current run has 6" in message
    assert "backbone" not in message


def test_a_model_loaded_with_its_own_config_skips_only_the_config_hash() -> None:
    """Serving and fold-in build the run from the saved config.yaml, filling keys added since with their
    defaults: its hash then differs though nothing does, so only that key is skipped."""
    newer = {**IDENTITY, "config_hash": "c1"}
    with pytest.raises(CheckpointError, match="config_hash: checkpoint has c0, current run has c1"):
        check_identity(IDENTITY, newer)
    check_identity(IDENTITY, newer, own_config=True)
    with pytest.raises(CheckpointError, match="n_users: checkpoint has 4, current run has 7"):
        check_identity(IDENTITY, {**newer, "n_users": 7}, own_config=True)


def test_config_hash_ignores_dotted_keys() -> None:
    longer = {**CONFIG, "pretrain": {**CONFIG["pretrain"], "rounds": 10}}
    assert config_hash(CONFIG) != config_hash(longer)
    assert config_hash(CONFIG, ignore=("pretrain.rounds",)) == config_hash(longer, ignore=("pretrain.rounds",))
    changed_lr = {**longer, "pretrain": {**longer["pretrain"], "lr": 0.1}}
    assert config_hash(CONFIG, ignore=("pretrain.rounds",)) != config_hash(changed_lr, ignore=("pretrain.rounds",))
    reordered = dict(reversed(list(CONFIG.items())))
    assert config_hash(reordered) == config_hash(CONFIG)
    assert config_hash(CONFIG, ignore=("absent.key", "finetune.none")) == config_hash(CONFIG)


def test_prune_keeps_newest_and_latest(tmp_path: Path) -> None:
    for epoch in range(1, 6):
        path = _save(tmp_path, f"e{epoch}")
        os.utime(path / "COMPLETE", ns=(epoch * 10**9, epoch * 10**9))
    (tmp_path / "latest").write_text("e2\n")  # older than the newest two, and still kept
    (tmp_path / "e1" / "COMPLETE").unlink()  # damaged: left alone, not counted
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")) == \
        ["e1", "e2", "e4", "e5"]
    assert find_latest(tmp_path) == tmp_path / "e2"


def test_crash_during_save_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = _save(tmp_path, "e1", state={"epoch": 1})

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_complete", boom)
    for tag in ("e2", "e1"):  # a new tag, and overwriting the existing one
        with pytest.raises(OSError, match="disk full"):
            _save(tmp_path, tag, state={"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["e1"]
    assert (tmp_path / "latest").read_text().strip() == "e1"
    assert find_latest(tmp_path) == previous
    assert load_checkpoint(previous).state == {"epoch": 1}


def test_invalid_tag_rejected(tmp_path: Path) -> None:
    for tag in ("../x", "latest", ".hidden", ""):
        with pytest.raises(CheckpointError, match="invalid checkpoint tag"):
            _save(tmp_path, tag)


def test_saved_model_round_trip(tmp_path: Path) -> None:
    tables = {"user": torch.randn(4, 3, dtype=torch.float64), "item": torch.randn(5, 3)[:, :2]}
    identity = {**IDENTITY, "tokenizer": "tiny-tok"}
    path = save_model(tmp_path / "model", tables, CONFIG, identity)
    model = load_model(path)
    assert model.config == CONFIG and model.identity == identity and model.extra == {}
    for name, table in tables.items():
        assert torch.equal(model.tables[name], table.float())
    complete = json.loads((path / "COMPLETE").read_text())["files"]
    assert sorted(complete) == ["config.yaml", "identity.json", "tables.safetensors"]
    (path / "identity.json").write_text(json.dumps({**identity, "backbone": "other"}))
    with pytest.raises(CheckpointError, match="identity.json is corrupted"):
        load_model(path)
    with pytest.raises(CheckpointError, match="tokenizer"):
        save_model(tmp_path / "model2", tables, CONFIG, IDENTITY)


def test_docs_name_every_file_which_ones_are_pickles_and_that_checkpoints_must_be_trusted(tmp_path: Path) -> None:
    """The module docstring and docs/cluster.md (7.3) say what a checkpoint holds: every file a
    plain-engine checkpoint writes is named and is safetensors/JSON/YAML; DeepSpeed's .pt files are
    pickles, unpickled on resume with weights_only=False; COMPLETE catches damage, not tampering."""
    params, optimizers = _build()
    path = save_checkpoint(tmp_path, "t", write_tables=_tables(params), write_optimizer=_writer(optimizers), state={},
                           config=CONFIG, identity=IDENTITY, extra_tensors={"lora.A": torch.zeros(2)})
    written = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert all(Path(name).suffix in (".safetensors", ".json", ".yaml") or name == "COMPLETE" for name in written)
    doc = ckpt.__doc__
    for name in {re.sub(r"^optimizer-[^.]+", "optimizer-<name>", name) for name in written}:
        assert name in doc, name
    cluster = (Path(__file__).resolve().parents[1] / "docs" / "cluster.md").read_text(encoding="utf-8")
    resume = cluster[cluster.index("### 7.3"):cluster.index("### 7.4")]
    for text in (doc, resume):
        for phrase in ("_model_states.pt", "_optim_states.pt", "weights_only=False", "trust", "not tampering"):
            assert phrase in " ".join(text.split()), phrase


def test_no_pickle_in_source() -> None:
    source = Path(ckpt.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node)}
    code = [ast.unparse(node) for node in ast.walk(tree) if id(node) not in docstrings
            and isinstance(node, (ast.Import, ast.ImportFrom, ast.Attribute, ast.Name, ast.Constant))]
    for forbidden in ("pickle", "torch.load", "torch.save", "joblib", "dill"):
        assert not [snippet for snippet in code if forbidden in snippet], forbidden
    assert "import pickle" not in source and "torch.load(" not in source


def _write_as_ranks(tables: dict[str, torch.Tensor], world: int):
    """A `save_tables` that writes `tables` as `world` row-sharded ranks would, each its `RowShards` block."""
    from cllm4rec.row_shards import RowShards

    def write(folder: Path) -> None:
        for rank in range(world):
            ckpt.write_table_rows(folder, {name: table[slice(*RowShards(table.shape[0], world).range(rank))]
                                           for name, table in tables.items()}, rank, world)
    return write


def test_row_sharded_tables_load_whole_and_by_any_rows(tmp_path: Path) -> None:
    """Tables written as 3 ranks' row shards: listed in COMPLETE, loaded whole (the shards end to end) and as
    any row range (slices across shard boundaries); a checkpoint so written exports with its shards."""
    gen = torch.Generator().manual_seed(3)
    tables = {"collab_user": torch.randn(7, 4, generator=gen), "collab_item": torch.randn(5, 4, generator=gen)}
    path = save_checkpoint(tmp_path / "ckpt", "t", write_tables=_write_as_ranks(tables, 3),
                           write_optimizer=lambda folder: None, state={}, config=CONFIG,
                           identity={**IDENTITY, "tokenizer": "tiny-tok"})
    shards = [f"tables-rows-r{r:04d}-of-0003.safetensors" for r in range(3)]
    assert ckpt.table_files(path) == shards and not (path / ckpt.TABLES).exists()
    assert set(shards) <= set(json.loads((path / "COMPLETE").read_text())["files"])
    loaded = load_checkpoint(path)
    assert loaded.tables.keys() == tables.keys() and all(torch.equal(loaded.tables[n], t) for n, t in tables.items())
    assert load_checkpoint(path, tables=False).tables == {}
    rows = ckpt.load_table_rows(path, {"collab_user": (1, 6), "collab_item": (4, 5)})  # user shards: 0-1, 2-3, 4-6
    assert torch.equal(rows["collab_user"], tables["collab_user"][1:6])
    assert torch.equal(rows["collab_item"], tables["collab_item"][4:5])
    with pytest.raises(CheckpointError, match=r"table 'collab_item' has 5 rows, rows \[3, 6\) were asked for"):
        ckpt.load_table_rows(path, {"collab_item": (3, 6)})
    exported = ckpt.export_model(path, tmp_path / "exported")
    assert ckpt.table_files(exported) == shards
    assert all(torch.equal(load_model(exported).tables[n], t) for n, t in tables.items())


@pytest.mark.parametrize("world", [None, 3])
def test_rows_by_index_and_column_sums_read_window_by_window(tmp_path: Path, world: int | None) -> None:
    """`TableReader.rows_at` returns any rows in the order asked (across shard files, windows of 2 rows of 4 fp32
    here, so most rows come from a window of their own), `column_sum` any range's sum; `table_shapes` reads
    the headers of whole and sharded files alike."""
    gen = torch.Generator().manual_seed(5)
    tables = {"collab_user": torch.randn(7, 4, generator=gen), "collab_item": torch.randn(5, 4, generator=gen)}
    write = _write_as_ranks(tables, world) if world else lambda folder: ckpt.write_tables(folder, tables)
    path = save_checkpoint(tmp_path / "ckpt", "t", write_tables=write, write_optimizer=lambda folder: None, state={},
                           config=CONFIG, identity={**IDENTITY, "tokenizer": "tiny-tok"})
    assert ckpt.table_shapes(path) == {"collab_user": (7, 4), "collab_item": (5, 4)}
    index = np.array([6, 0, 3, 3, 5, 1])
    with ckpt.TableReader(path) as reader:
        assert torch.equal(reader.rows_at("collab_user", index, window_bytes=32), tables["collab_user"][index])
        assert reader.rows_at("collab_item", np.array([], dtype=np.int64)).shape == (0, 4)
        total = reader.column_sum("collab_user", 1, 6, window_bytes=32)
        assert total.dtype == torch.float64 and torch.allclose(total, tables["collab_user"][1:6].double().sum(dim=0))
        with pytest.raises(CheckpointError, match=r"table 'collab_item' has 5 rows, row 5 was asked for"):
            reader.rows_at("collab_item", np.array([0, 5]))


def test_incomplete_or_mixed_table_files_are_refused_by_name(tmp_path: Path) -> None:
    tables = {"collab_user": torch.randn(4, 2)}
    identity = {**IDENTITY, "tokenizer": "tiny-tok"}
    path = ckpt.save_model_from_ranks(tmp_path / "model", _write_as_ranks(tables, 2), CONFIG, identity)
    (path / "tables-rows-r0001-of-0002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"the table rows of ranks \[1\] of 2 .* are missing"):
        load_model(path)
    ckpt.write_tables(path, tables)
    with pytest.raises(CheckpointError, match=r"whole \(tables.safetensors\) or as the row shards of one world size"):
        load_model(path)
    with pytest.raises(CheckpointError, match=r"found none"):
        ckpt.table_files(tmp_path)
