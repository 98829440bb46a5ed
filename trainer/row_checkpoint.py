"""The row-sharded engine's optimizer state in a checkpoint, and how a run on another number of ranks
reads it back (docs/cluster.md, section 7.3).

Each rank writes the state of its shards (Adam's moments of its rows, the step counts, the groups) as
`optimizer-rows-r<rank>-of-<world>` (`checkpoint.save_optimizer`: safetensors + JSON, no pickle). A
run on any number of ranks reads back exactly its own rows: for each table, the row ranges of the
writing ranks (`RowShards` of the saved world size) that overlap its own, sliced from the files
without loading the rest (resharding). Tensors with a row axis are the rows' state; 0-d ones (the step
counts) are the same on every rank and come from rank 0's file.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from cllm4rec.row_shards import RowShards
from trainer.checkpoint import CheckpointError, optimizer_meta, optimizer_tensors, save_optimizer

NAME = re.compile(r"optimizer-(rows-r(\d{4})-of-(\d{4}))\.json")


def state_name(rank: int, world: int) -> str:
    return f"rows-r{rank:04d}-of-{world:04d}"


def save_row_optimizer(folder: Path, optimizer: torch.optim.Optimizer, rank: int, world: int) -> None:
    """This rank's part of the optimizer state (collective by convention: every rank writes its own)."""
    save_optimizer(folder, state_name(rank, world), optimizer)


def saved_world(folder: Path) -> int:
    """The number of ranks that wrote the row-sharded optimizer state in `folder` (all of whose files
    must be there)."""
    found = {(int(m.group(2)), int(m.group(3))) for p in Path(folder).glob("optimizer-rows-*.json")
             if (m := NAME.fullmatch(p.name))}
    worlds = {world for _, world in found}
    if len(worlds) != 1:
        raise CheckpointError(f"{folder}: expected the row-sharded optimizer state of one world size "
                              f"(optimizer-rows-r<rank>-of-<world>.json), found {sorted(found) or 'none'}")
    (world,) = worlds
    missing = sorted(set(range(world)) - {rank for rank, _ in found})
    if missing:
        raise CheckpointError(f"{folder}: the row-sharded optimizer state of ranks {missing} of {world} is missing")
    return world


def load_row_optimizer(folder: Path, optimizer: torch.optim.Optimizer, layouts: list[RowShards], rank: int) -> None:
    """Restore this rank's rows of the state saved by any number of ranks into `optimizer`, whose
    parameters (in group order) are this rank's shards of tables split as `layouts`."""
    world = saved_world(folder)
    metas = [optimizer_meta(folder, state_name(r, world)) for r in range(world)]
    current = [[layout.n_rows, *p.shape[1:]] for layout, p in zip(layouts, _params(optimizer))]
    shards = [[shape for group in meta["param_shapes"] for shape in group] for meta in metas]  # [rank][param]
    saved = [[sum(ranks[i][0] for ranks in shards), *shape[1:]] for i, shape in enumerate(shards[0])]
    if saved != current:
        raise CheckpointError(f"{folder}: the saved optimizer state is of tables shaped {saved}, this run's are {current}")
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in metas[0]["state"].items()}
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(safe_open(str(optimizer_tensors(folder, state_name(r, world))), "pt"))
                 for r in range(world)]
        for index, layout in enumerate(layouts):
            lo, hi = layout.range(rank)
            written = RowShards(layout.n_rows, world)
            pieces: dict[str, list[torch.Tensor]] = {}
            for r, file in enumerate(files):
                a, b = written.range(r)
                for key in (k for k in file.keys() if k.startswith(f"state.{index}.")):
                    attr = key.split(".", 2)[2]
                    part = file.get_slice(key)
                    if not part.get_shape():  # a step count: the same on every rank
                        if r == 0:
                            state.setdefault(index, {})[attr] = file.get_tensor(key)
                    elif max(lo, a) < min(hi, b):
                        pieces.setdefault(attr, []).append(part[max(lo, a) - a : min(hi, b) - a])
            for attr, parts in pieces.items():
                state.setdefault(index, {})[attr] = torch.cat(parts)
    optimizer.load_state_dict({"state": state, "param_groups": metas[0]["param_groups"]})


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]
