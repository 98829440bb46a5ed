"""Run a function on R CPU ranks: spawned processes in a gloo group of their own, bounded by a timeout.

`run_ranks(fn, world, folder, *args)` calls fn(comm, *args) on every rank (comm: a
`cllm4rec.collectives.Collectives`) and returns each rank's result (tensors, numbers, lists and dicts
of them), in rank order. `fn` must be a module-level function (spawned processes import it).
"""
from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch


def run_ranks(fn: Callable[..., Any], world: int, folder: Path, *args: Any, timeout: float = 240) -> list[Any]:
    from trainer.distributed import free_port

    folder.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    port = free_port()
    processes = [context.Process(target=_rank, args=(fn, rank, world, port, folder, args)) for rank in range(world)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    stuck = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for rank in stuck:
        processes[rank].kill()
    for process in processes:
        process.join()
    assert not stuck, f"ranks {stuck} of {world} still running after {timeout} s"
    codes = [process.exitcode for process in processes]
    assert codes == [0] * world, f"exit codes of the ranks: {codes}"
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(world)]


def _rank(fn: Callable[..., Any], rank: int, world: int, port: int, folder: Path, args: tuple) -> None:
    import torch.distributed as dist

    from cllm4rec.collectives import Collectives

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(Collectives(rank, world), *args)
    finally:
        dist.destroy_process_group()
    torch.save(result, folder / f"rank{rank}.pt")
