"""Parameters that may be ZeRO-3 partitions (built under `deepspeed.zero.Init`, trainer/zero_build.py) or one
rank's rows of a table (`cllm4rec.row_shards.RowSlices`, which marks them with `first_row`): their full shape,
the part of them this rank holds, and their full values for a moment. Plain parameters pass through unchanged."""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch


def is_partitioned(param: torch.Tensor) -> bool:
    """Whether `param` is a ZeRO-3 parameter (its data is a placeholder; its rank's slice is `ds_tensor`)."""
    return hasattr(param, "ds_id")


def is_row_slice(param: torch.Tensor) -> bool:
    """Whether `param` is one rank's rows of a table (`cllm4rec.row_shards.row_slice`, marked with `first_row`)."""
    return hasattr(param, "first_row")


def first_row(param: torch.Tensor) -> int:
    """The first row of the whole table that `param` holds: a row slice's `first_row`, else 0."""
    return getattr(param, "first_row", 0)


def full_shape(param: torch.Tensor) -> torch.Size:
    """The whole parameter's shape, also for a ZeRO-3 partition."""
    return param.ds_shape if is_partitioned(param) else param.shape


def held_elements(param: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(start, values): the flat elements [start, start + values.numel()) of the whole parameter that this
    rank holds, and a writable flat view of them: a ZeRO-3 partition's slice (its padding left out), the rows
    of a row slice (`first_row`), or all of a whole parameter."""
    if is_partitioned(param):
        size = param.ds_tensor.numel()
        start = size * param.ds_zero_partition_rank
        return start, param.ds_tensor[:max(0, min(size, param.ds_numel - start))]
    return first_row(param) * math.prod(param.shape[1:]), param.data.view(-1)


@contextlib.contextmanager
def gathered(params: list[torch.Tensor]) -> Iterator[None]:
    """Inside, the partitioned ones of `params` hold their full values (read-only; collective: every rank
    enters together); a no-op for plain parameters."""
    zero = [p for p in params if is_partitioned(p)]
    if not zero:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(zero):
        yield
