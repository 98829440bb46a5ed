"""Parameters that may be ZeRO-3 partitions (built under `deepspeed.zero.Init`, trainer/zero_build.py):
their full shape, and their full values for a moment. Plain parameters pass through unchanged."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def is_partitioned(param: torch.Tensor) -> bool:
    """Whether `param` is a ZeRO-3 parameter (its data is a placeholder; its rank's slice is `ds_tensor`)."""
    return hasattr(param, "ds_id")


def full_shape(param: torch.Tensor) -> torch.Size:
    """The whole parameter's shape, also for a ZeRO-3 partition."""
    return param.ds_shape if is_partitioned(param) else param.shape


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
