"""Epoch checkpoints and the exported model folder.

A checkpoint `root/<tag>/` holds the fp32 ID tables, optional extra.safetensors (trainable
backbone/LoRA weights), state.json (training position), config.yaml, identity.json, the engine's
optimizer state and, written last, COMPLETE (JSON: the sha256 of every other file). Folders are written
whole (`atomic_folder`); `root/latest` names the last tag written. Nothing without a valid COMPLETE loads.

The tables are on disk in one of two layouts, in checkpoints and saved models alike. Whole:
tables.safetensors, written by rank 0 (the plain and ZeRO-3 engines). Row-sharded: one
tables-rows-r<rank>-of-<world>.safetensors per rank, each with that rank's rows of every table
(`cllm4rec.row_shards.RowShards` of the world size; the row-sharded engine), so no rank ever holds a
whole table to write it. Every reader takes both: `load_tables` gives the tables whole (the shards laid
end to end in rank order), `load_table_rows` any row range of each, slicing only the files that hold it.

Pickles. This module writes and reads only safetensors, JSON and YAML; it never pickles or unpickles.
The plain engine's optimizer state is optimizer-<name>.safetensors + optimizer-<name>.json
(`save_optimizer`), so a plain-engine checkpoint holds no pickle, nor does an exported model folder
(`save_model`: tables.safetensors, extra.safetensors if any, config.yaml, identity.json, COMPLETE). The
DeepSpeed engine's optimizer state is DeepSpeed's own checkpoint, written by DeepSpeed under deepspeed/
(`trainer.engine.DeepSpeedEngine.save_optimizer`): per rank r,
deepspeed/state/zero_pp_rank_<r>_mp_rank_00_model_states.pt and
deepspeed/state/[bf16_]zero_pp_rank_<r>_mp_rank_00_optim_states.pt, which are torch.save pickles,
plus DeepSpeed's recovery scripts deepspeed/zero_to_fp32.py and zero_to_torch.py (copied there,
never run by the trainer). Resuming a DeepSpeed run (`--resume`: `DeepSpeedEngine.load_optimizer`,
then DeepSpeed's load_checkpoint) unpickles those .pt files with `torch.load` and weights_only=False,
which runs whatever code a crafted file holds. `load_checkpoint`, `load_model`, `export_model`,
evaluation and serving never read deepspeed/.

Trust. Resume only from a checkpoint folder you trust: written by your own runs, on storage that
only trusted users can write. COMPLETE detects damage (a torn write, a truncated copy, bit rot), not
tampering: whoever can write the folder can rewrite COMPLETE to match.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from data_prep.atomic import atomic_folder, atomic_write_text, sha256_file
from trainer.config import RESUMABLE_KEYS, TrainConfig, config_to_dict
from trainer.distributed import LOCAL, Dist

if TYPE_CHECKING:
    from trainer.build import RunParts

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
TABLES = "tables.safetensors"
EXTRA = "extra.safetensors"
STATE = "state.json"
CONFIG = "config.yaml"
IDENTITY = "identity.json"
ROW_WINDOW_BYTES = 1 << 26  # rows read at once by `TableReader.rows_at` / `column_sum`: 64 MiB of fp32
TABLE_SHARD = re.compile(r"tables-rows-r(\d{4})-of-(\d{4})\.safetensors")
MODEL_FILES = (CONFIG, IDENTITY)  # and the tables (`table_files`), whole or row-sharded
DATASET = "dataset"  # a model folder's own processed dataset (a fold-in's grown catalogue), read instead of data.dataset
CHECKPOINT_FILES = (*MODEL_FILES, STATE)
LATEST = "latest"  # the pointer file naming the last checkpoint written
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class CheckpointError(RuntimeError):
    """A checkpoint or saved model is incomplete, corrupted or does not match this run."""


def _check_name(name: str, what: str) -> str:
    """Return `name` if it is a safe single path component (and not the pointer file's name)."""
    if not _NAME.fullmatch(name) or name == LATEST:
        raise CheckpointError(f"invalid {what} {name!r}: use letters, digits, '.', '_', '-' (not {LATEST!r})")
    return name


def _cpu_copy(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A detached, contiguous CPU copy (never sharing storage with the caller's tensor)."""
    return tensor.detach().to(device="cpu", dtype=dtype, copy=True).contiguous()


def _write_json(path: Path, data: Any) -> None:
    """Write `data` as JSON; tuples are tagged so `_read_json` gives them back as tuples."""
    path.write_text(json.dumps(_encode(data, path.name), indent=2, sort_keys=True), encoding="utf-8")


def _read_json(path: Path) -> Any:
    """Read JSON written by `_write_json`."""
    return json.loads(path.read_text(encoding="utf-8"), object_hook=_decode_tuple)


def _encode(value: Any, where: str) -> Any:
    """JSON-ready copy of `value`; raises CheckpointError naming where a non-JSON value sits."""
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v, f"{where}.{k}") for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise CheckpointError(f"{where}: values of type {type(value).__name__} cannot be saved as JSON")


def _decode_tuple(obj: dict[str, Any]) -> Any:
    return tuple(obj["__tuple__"]) if set(obj) == {"__tuple__"} else obj


def _write_complete(folder: Path) -> None:
    """Write COMPLETE (last) with the sha256 of every other file under `folder`."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE)
    _write_json(folder / COMPLETE, {"files": {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}})


def _verify(folder: Path, required: tuple[str, ...]) -> None:
    """Raise CheckpointError naming the file unless COMPLETE exists and every checksum matches."""
    marker = folder / COMPLETE
    if not marker.is_file():
        raise CheckpointError(f"{marker} is missing: {folder} is incomplete")
    try:
        files = dict(_read_json(marker)["files"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{marker} is unreadable: {error}") from error
    for name in dict.fromkeys([*required, *table_files(folder), *files]):
        path = folder / name
        if name not in files or not path.is_file():
            raise CheckpointError(f"{path} is missing")
        if sha256_file(path) != files[name]:
            raise CheckpointError(f"{path} is corrupted: its sha256 does not match {marker}")


def table_shard_name(rank: int, world: int) -> str:
    """The file of rank `rank`'s rows of every table, written by `world` ranks."""
    return f"tables-rows-r{rank:04d}-of-{world:04d}.safetensors"


def write_tables(folder: Path, tables: dict[str, torch.Tensor]) -> None:
    """Write whole fp32 `tables` as tables.safetensors."""
    save_file({k: _cpu_copy(v, torch.float32) for k, v in tables.items()}, str(Path(folder) / TABLES))


def write_table_rows(folder: Path, rows: dict[str, torch.Tensor], rank: int, world: int) -> None:
    """Write this rank's fp32 `rows` of every table (its `RowShards` block of `world` ranks)."""
    save_file({k: _cpu_copy(v, torch.float32) for k, v in rows.items()}, str(Path(folder) / table_shard_name(rank, world)))


def table_files(folder: Path) -> list[str]:
    """The files that hold `folder`'s tables: [tables.safetensors], or the row shards of one world size in rank
    order; CheckpointError naming the folder when there are none, a rank's shard is missing, or both layouts
    (or shards of two world sizes) are there."""
    folder = Path(folder)
    shards = {(int(m.group(1)), int(m.group(2))) for p in folder.glob("tables-rows-*.safetensors")
              if (m := TABLE_SHARD.fullmatch(p.name))}
    whole = (folder / TABLES).is_file()
    if whole and not shards:
        return [TABLES]
    worlds = {world for _, world in shards}
    if whole or len(worlds) != 1:
        found = ([TABLES] if whole else []) + [table_shard_name(r, w) for r, w in sorted(shards)]
        raise CheckpointError(f"{folder}: expected the ID tables whole ({TABLES}) or as the row shards of one "
                              f"world size (tables-rows-r<rank>-of-<world>.safetensors), found {found or 'none'}")
    (world,) = worlds
    missing = sorted(set(range(world)) - {rank for rank, _ in shards})
    if missing:
        raise CheckpointError(f"{folder}: the table rows of ranks {missing} of {world} "
                              f"({table_shard_name(missing[0], world)}, ...) are missing")
    return [table_shard_name(rank, world) for rank in range(world)]


def load_tables(folder: Path) -> dict[str, torch.Tensor]:
    """The tables of `folder` whole (row shards laid end to end); not verified: callers verify first."""
    parts = [load_file(str(Path(folder) / name)) for name in table_files(folder)]
    return parts[0] if len(parts) == 1 else {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


class TableReader:
    """The table files of a folder (`table_files`: whole, or row shards of any world size), opened once for
    reads of row ranges, rows by index and column sums; nothing is read until asked. Not verified: callers
    verify first. A context manager: the files close on exit."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._stack = contextlib.ExitStack()
        self._files = [self._stack.enter_context(safe_open(str(self.folder / name), "pt"))
                       for name in table_files(self.folder)]
        self.shapes: dict[str, tuple[int, int]] = {}
        """{table: (rows, K)}, from the files' headers."""
        for file in self._files:
            for key in file.keys():
                rows, dim = file.get_slice(key).get_shape()
                self.shapes[key] = (self.shapes.get(key, (0, dim))[0] + rows, dim)

    def __enter__(self) -> "TableReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def rows(self, name: str, lo: int, hi: int) -> torch.Tensor:
        """Rows [lo, hi) of table `name`, sliced from the files that hold them."""
        if name not in self.shapes:
            raise CheckpointError(f"{self.folder}: its tables have no {name!r} (they hold {sorted(self.shapes)})")
        if not 0 <= lo < hi <= self.shapes[name][0]:
            raise CheckpointError(f"{self.folder}: table {name!r} has {self.shapes[name][0]} rows, rows [{lo}, {hi}) "
                                  f"were asked for")
        pieces, start = [], 0
        for file in self._files:
            part = file.get_slice(name)
            a, b = start, start + part.get_shape()[0]
            if max(lo, a) < min(hi, b):
                pieces.append(part[max(lo, a) - a : min(hi, b) - a])
            start = b
        return torch.cat(pieces)

    def rows_at(self, name: str, index: np.ndarray, window_bytes: int = ROW_WINDOW_BYTES) -> torch.Tensor:
        """fp32 [len(index), K]: rows `index` (any order) of table `name`, read a window of at most
        `window_bytes` of consecutive rows at a time, skipping the windows with no row asked for."""
        rows, dim = self.shapes[name]
        index = np.asarray(index, dtype=np.int64)
        if index.size and not (0 <= index.min() and index.max() < rows):
            raise CheckpointError(f"{self.folder}: table {name!r} has {rows} rows, row {int(index.max())} was asked for")
        out = torch.empty((index.size, dim), dtype=torch.float32)
        order = np.argsort(index, kind="stable")
        wanted, window, k = index[order], max(1, window_bytes // (4 * dim)), 0
        while k < wanted.size:
            lo = int(wanted[k])
            stop = int(np.searchsorted(wanted, lo + window))
            block = self.rows(name, lo, int(wanted[stop - 1]) + 1)
            out[torch.from_numpy(order[k:stop])] = block[torch.from_numpy(wanted[k:stop] - lo)].float()
            k = stop
        return out

    def column_sum(self, name: str, lo: int, hi: int, window_bytes: int = ROW_WINDOW_BYTES) -> torch.Tensor:
        """float64 [K]: the sum of rows [lo, hi) of table `name`, read a window of at most `window_bytes` at a
        time."""
        dim = self.shapes[name][1]
        total, window = torch.zeros(dim, dtype=torch.float64), max(1, window_bytes // (4 * dim))
        for start in range(lo, hi, window):
            total += self.rows(name, start, min(hi, start + window)).double().sum(dim=0)
        return total


def table_shapes(folder: Path) -> dict[str, tuple[int, int]]:
    """{table: (rows, K)} of `folder`'s tables, from the files' headers (nothing read)."""
    with TableReader(folder) as tables:
        return tables.shapes


def load_table_rows(folder: Path, ranges: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Rows [lo, hi) of each table named in `ranges`, sliced from the files that hold them (a rank's rows of a
    table written by any number of ranks, without reading the rest); not verified: callers verify first."""
    with TableReader(folder) as tables:
        return {name: tables.rows(name, lo, hi) for name, (lo, hi) in ranges.items()}


def _write_common(folder: Path, config: dict, identity: dict, extra_tensors: dict[str, torch.Tensor] | None) -> None:
    """Write the files shared by checkpoints and saved models other than the tables and COMPLETE."""
    if extra_tensors:
        save_file({k: _cpu_copy(v) for k, v in extra_tensors.items()}, str(folder / EXTRA))
    (folder / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    _write_json(folder / IDENTITY, identity)


def save_optimizer(folder: Path, name: str, optimizer: torch.optim.Optimizer) -> None:
    """Split `optimizer.state_dict()` into safetensors (state tensors) and JSON (everything else)."""
    full = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in full["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = _cpu_copy(value)
            else:
                scalars.setdefault(str(index), {})[key] = value
    shapes = [[list(p.shape) for p in group["params"]] for group in optimizer.param_groups]
    meta = {"param_groups": full["param_groups"], "param_shapes": shapes, "state": scalars}
    save_file(tensors, str(optimizer_tensors(folder, name)))
    _write_json(optimizer_json(folder, name), meta)


def optimizer_meta(folder: Path, name: str) -> dict[str, Any]:
    """The JSON part of optimizer `name` saved by `save_optimizer` in `folder`: "param_groups",
    "param_shapes", "state" (the non-tensor state); its tensors are in `optimizer_tensors(folder, name)`."""
    meta_path = optimizer_json(folder, name)
    if not meta_path.is_file():
        saved = sorted(p.stem.removeprefix("optimizer-") for p in Path(folder).glob("optimizer-*.json"))
        raise CheckpointError(f"{folder} has no optimizer {name!r} (saved: {saved})")
    return _read_json(meta_path)


def optimizer_json(folder: Path, name: str) -> Path:
    """The JSON file of optimizer `name`'s groups, parameter shapes and non-tensor state."""
    return Path(folder) / f"optimizer-{_check_name(name, 'optimizer name')}.json"


def optimizer_tensors(folder: Path, name: str) -> Path:
    """The safetensors file of optimizer `name`'s state tensors, keyed "state.<param index>.<key>"."""
    return Path(folder) / f"optimizer-{_check_name(name, 'optimizer name')}.safetensors"


def restore_optimizer(folder: Path, name: str, optimizer: torch.optim.Optimizer) -> None:
    """Load the state saved by `save_optimizer` into `optimizer`, freshly built over the same parameters."""
    meta = optimizer_meta(folder, name)
    current = [[list(p.shape) for p in group["params"]] for group in optimizer.param_groups]
    if meta["param_shapes"] != current:
        raise CheckpointError(f"optimizer {name!r} does not match {optimizer_json(folder, name)}: saved "
                              f"parameter groups with shapes {meta['param_shapes']}, current ones {current}")
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, tensor in load_file(str(optimizer_tensors(folder, name))).items():
        _, index, attr = key.split(".", 2)
        state.setdefault(int(index), {})[attr] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


@dataclass
class SavedModel:
    """A verified exported model: ID tables, resolved config, identity (backbone and tokenizer) and extras."""

    path: Path
    tables: dict[str, torch.Tensor]
    config: dict[str, Any]
    identity: dict[str, Any]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Checkpoint(SavedModel):
    """A verified checkpoint plus its training state; the engine reads its optimizer state from `path`."""

    state: dict[str, Any] = field(default_factory=dict)


def _load_common(path: Path, required: tuple[str, ...], tables: bool) -> dict[str, Any]:
    """Verify every checksum under `path`, then read the fields shared by checkpoints and saved models (the
    tables whole if `tables`, else none: an engine reads its own rows, `load_table_rows`)."""
    _verify(path, required)
    return {"path": path, "tables": load_tables(path) if tables else {},
            "config": yaml.safe_load((path / CONFIG).read_text(encoding="utf-8")),
            "identity": _read_json(path / IDENTITY),
            "extra": load_file(str(path / EXTRA)) if (path / EXTRA).is_file() else {}}


def _write_from_ranks(dest: Path, dist: Dist, by_every_rank: Callable[[Path], None],
                      by_rank_0: Callable[[Path], None]) -> None:
    """Write folder `dest` whole or not at all (collective): rank 0 owns the temp folder; every rank runs
    `by_every_rank(folder)` (its table rows, its optimizer partition), then rank 0 `by_rank_0(folder)` and
    COMPLETE, which lists every rank's files."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_folder(dest)) if dist.is_main else None
        tmp = Path(dist.broadcast(str(tmp) if tmp else None))
        by_every_rank(tmp)
        dist.barrier()  # every rank's files are on disk before COMPLETE lists them
        if dist.is_main:
            by_rank_0(tmp)
            _write_complete(tmp)


def save_checkpoint(root: Path, tag: str, *, write_tables: Callable[[Path], None],
                    write_optimizer: Callable[[Path], None], state: dict, config: dict, identity: dict,
                    extra_tensors: dict[str, torch.Tensor] | None = None, dist: Dist = LOCAL) -> Path:
    """Write checkpoint `root/<tag>/` whole or not at all, then point `root/latest` at it.

    Collective under several ranks: every rank calls `write_tables(folder)` (an engine's `save_tables`:
    rank 0 writes whole tables, or every rank its rows) and `write_optimizer(folder)` (its optimizer
    partition); rank 0 owns the temp folder and writes state, config, identity and COMPLETE.
    """
    root, dest = Path(root), Path(root) / _check_name(tag, "checkpoint tag")

    def by_every_rank(folder: Path) -> None:
        write_tables(folder)
        write_optimizer(folder)

    def by_rank_0(folder: Path) -> None:
        _write_common(folder, config, identity, extra_tensors)
        _write_json(folder / STATE, state)

    _write_from_ranks(dest, dist, by_every_rank, by_rank_0)
    if dist.is_main:
        atomic_write_text(root / LATEST, tag + "\n")
    dist.barrier()
    return dest


def _latest_tag(root: Path) -> str | None:
    """The tag `root/latest` names, or None if it is absent or not a valid tag."""
    path = root / LATEST
    tag = path.read_text(encoding="utf-8").strip() if path.is_file() else None
    if tag is not None and (not _NAME.fullmatch(tag) or tag == LATEST):
        log.warning("ignoring %s: %r is not a checkpoint tag", path, tag)
        return None
    return tag


def _is_valid(folder: Path) -> bool:
    """True if `folder` is a complete checkpoint with matching checksums; warns naming it otherwise."""
    try:
        _verify(folder, CHECKPOINT_FILES)
    except CheckpointError as error:
        log.warning("ignoring checkpoint %s: %s", folder, error)
        return False
    return True


def _newest_first(root: Path) -> list[Path]:
    """Checkpoint folders under `root` (temp and aside folders excluded), newest COMPLETE first."""
    def age(folder: Path) -> tuple[int, str]:
        marker = folder / COMPLETE
        return ((marker if marker.is_file() else folder).stat().st_mtime_ns, folder.name)
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []
    return sorted(folders, key=age, reverse=True)


def find_latest(root: Path) -> Path | None:
    """The checkpoint named in `root/latest` if valid, else the newest valid one, else None."""
    root = Path(root)
    tag = _latest_tag(root)
    if tag is not None:
        if not (root / tag).is_dir():
            log.warning("%s names %r, which does not exist", root / LATEST, tag)
        elif _is_valid(root / tag):
            return root / tag
    return next((folder for folder in _newest_first(root)
                 if folder.name != tag and _is_valid(folder)), None)


def load_checkpoint(path: Path, tables: bool = True) -> Checkpoint:
    """Verify every checksum of checkpoint `path`, then load it (optimizer state stays on disk until restored;
    the tables too unless `tables`)."""
    path = Path(path)
    return Checkpoint(**_load_common(path, CHECKPOINT_FILES, tables), state=_read_json(path / STATE))


def check_identity(saved: dict, current: dict, *, own_config: bool = False) -> None:
    """Raise CheckpointError listing every key whose value differs between the checkpoint and this run.

    own_config: the run was built from the saved model's own config.yaml (serving, fold-in), so its
    "config_hash" is not compared: it differs only when this version has config keys the saving one
    had not, which a loaded model takes at their defaults."""
    if own_config:
        saved, current = ({k: v for k, v in d.items() if k != "config_hash"} for d in (saved, current))
    missing = "<missing>"
    problems = [f"{key}: checkpoint has {saved.get(key, missing)}, current run has {current.get(key, missing)}"
                for key in sorted(set(saved) | set(current)) if saved.get(key, missing) != current.get(key, missing)]
    if problems:
        raise CheckpointError("the checkpoint does not match this run: " + "; ".join(problems))


def config_hash(config: dict, ignore: tuple[str, ...] = ()) -> str:
    """sha256 of the config as canonical JSON, without the dotted keys in `ignore` (e.g. 'pretrain.rounds')."""
    pruned = copy.deepcopy(config)
    for dotted in ignore:
        *parents, last = dotted.split(".")
        node: Any = pruned
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    canonical = json.dumps(pruned, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def identity_of(config: TrainConfig, parts: RunParts) -> dict[str, Any]:
    """What a checkpoint or saved model must share with the run that loads it: the config (without the
    keys that may change on resume), the dataset, the backbone and tokenizer, and the table shapes."""
    return {
        "config_hash": config_hash(config_to_dict(config), ignore=RESUMABLE_KEYS),
        "dataset_hash": parts.dataset_hash,
        "backbone": parts.backbone_ref,
        "tokenizer": parts.backbone_ref,
        "n_users": parts.dataset.n_users,
        "n_items": parts.dataset.n_items,
        "vocab_rows": parts.model.vocab_rows,
    }


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` valid checkpoints, always keeping the one `latest` names.

    Invalid folders are left in place (with a warning) so a damaged run can still be inspected.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    root = Path(root)
    latest = _latest_tag(root)
    valid = [folder for folder in _newest_first(root) if _is_valid(folder)]
    for folder in valid[keep:]:
        if folder.name != latest:
            (folder / COMPLETE).unlink()  # first, so a crash mid-delete leaves an ignored, incomplete folder
            shutil.rmtree(folder)
            log.debug("pruned checkpoint %s", folder)


def save_model(dir: Path, tables: dict[str, torch.Tensor], config: dict, identity: dict,
               extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the exported model folder whole: tables, config.yaml, identity.json (backbone, tokenizer), COMPLETE."""
    return save_model_from_ranks(dir, lambda folder: write_tables(folder, tables), config, identity, extra_tensors)


def save_model_from_ranks(dir: Path, write_tables: Callable[[Path], None], config: dict, identity: dict,
                          extra_tensors: dict[str, torch.Tensor] | None = None, dist: Dist = LOCAL) -> Path:
    """`save_model` by every rank together: each calls `write_tables(folder)` (an engine's `save_tables`),
    rank 0 writes the rest (collective)."""
    _check_identity_refs(identity)
    _write_from_ranks(Path(dir), dist, write_tables,
                      lambda folder: _write_common(folder, config, identity, extra_tensors))
    dist.barrier()
    return Path(dir)


def _check_identity_refs(identity: dict) -> None:
    absent = [key for key in ("backbone", "tokenizer") if key not in identity]
    if absent:
        raise CheckpointError(f"a saved model's identity needs {absent} (the backbone and tokenizer references)")


def write_model_files(folder: Path, tables: dict[str, torch.Tensor], config: dict, identity: dict,
                      extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write a saved model's files into `folder`, a staging folder the caller renames into place; COMPLETE
    (last) also covers whatever else the caller wrote there first (a fold-in's DATASET)."""
    _check_identity_refs(identity)
    write_tables(folder, tables)
    _write_common(folder, config, identity, extra_tensors)
    _write_complete(folder)


def load_model(dir: Path, tables: bool = True) -> SavedModel:
    """Verify every checksum of a saved model folder, then load it (safetensors, YAML and JSON only; the
    tables whole unless `tables` is False)."""
    dir = Path(dir)
    if not dir.is_dir():
        problem = "is a file, not a folder" if dir.exists() else "not found"
        raise CheckpointError(f"{dir}: {problem} (a saved model is a run's <output_dir>/model folder)")
    if not (dir / COMPLETE).is_file() and (dir / "model" / COMPLETE).is_file():
        raise CheckpointError(f"{dir}: a run folder, not a saved model; its model is {dir / 'model'}")
    return SavedModel(**_load_common(dir, MODEL_FILES, tables))


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, given itself, a checkpoints root (its latest complete one) or a run folder."""
    path = Path(path)
    if (path / COMPLETE).is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = find_latest(root)
    if latest is None:
        raise CheckpointError(f"{path}: no complete checkpoint found (looked in {root})")
    return latest


def export_model(checkpoint: Path, out: Path) -> Path:
    """Write a saved-model folder from a checkpoint's fp32 tables, copied in their layout (whole, or the row
    shards as the ranks wrote them) — no launcher, no DeepSpeed, no unpickling: a ZeRO-3 checkpoint already
    holds the tables gathered from all ranks."""
    saved = load_checkpoint(resolve_checkpoint(checkpoint), tables=False)

    def copy_tables(folder: Path) -> None:
        for name in table_files(saved.path):
            shutil.copyfile(saved.path / name, folder / name)

    identity = {k: v for k, v in saved.identity.items() if k != "engine"}
    return save_model_from_ranks(out, copy_tables, saved.config, identity, extra_tensors=saved.extra or None)
