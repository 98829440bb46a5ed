"""The process group a run belongs to: rank, world size, and the few collectives the loop needs.

Three ways of starting share this: a plain process (no launcher: world size 1), the DeepSpeed
launcher (`deepspeed ... -m trainer`, which sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT), and Ray Train workers (which set the same variables before calling the loop).
With world size 1 and no process group every collective is the identity, so callers never branch.
"""
from __future__ import annotations

import os
import socket
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as torch_dist


def launched() -> bool:
    """Whether a launcher (DeepSpeed, torchrun, Ray Train) started this process: WORLD_SIZE is set."""
    return "WORLD_SIZE" in os.environ


def launched_world_size() -> int:
    """WORLD_SIZE set by a launcher, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def single_node_launch(script_args: Sequence[str], ranks: int) -> list[str]:
    """The DeepSpeed launcher's command for `script_args` (a script and its flags) on `ranks` local ranks,
    its store on a port of its own (`free_port`: a port reused from an earlier launch, or derived from a
    pid, can still be held)."""
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
            "--master_port", str(free_port()), "--no_local_rank", *script_args]


@dataclass(frozen=True)
class Dist:
    """This process's place in the run. `active` is False for a single process without a group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks of a short float vector (float64 on the CPU-side group)."""
        if not self.active:
            return [float(v) for v in values]
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self._device())
        torch_dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def all_reduce_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of `tensor` over ranks (a new tensor on the input's device)."""
        if not self.active:
            return tensor
        out = tensor.to(self._device(), copy=True)
        torch_dist.all_reduce(out)
        return out.to(tensor.device)

    def broadcast(self, value: Any, src: int = 0) -> Any:
        """`value` from rank `src` on every rank (small, JSON-like Python objects only)."""
        if not self.active:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=src)
        return box[0]

    def broadcast_tensor(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank `src`'s `tensor` on every rank (each rank passes one of the same shape and dtype); a new tensor
        on the input's device."""
        if not self.active:
            return tensor
        out = tensor.to(self._device(), copy=True)
        torch_dist.broadcast(out, src=src)
        return out.to(tensor.device)

    def all_gather(self, value: Any) -> list[Any]:
        """[value of rank 0, value of rank 1, ...] on every rank (small, JSON-like objects only)."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(out, value)
        return out

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if torch_dist.get_backend() == "nccl" else torch.device("cpu")


LOCAL = Dist()


def init_distributed(device: str, require_group: bool) -> Dist:
    """Join (or create) the process group and return this process's `Dist`.

    With a launcher (WORLD_SIZE set) the group is always created. Without one, a group of one is
    created only if `require_group` (DeepSpeed needs one); MASTER_* then point at a free local port.
    Backend: nccl for CUDA devices, gloo otherwise.
    """
    world = launched_world_size()
    if world == 1 and not require_group:
        return LOCAL
    if world == 1:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:  # an explicit cuda:N (e.g. from Ray Train) wins over the local rank
        torch.cuda.set_device(torch.device(device).index if ":" in device else local_rank)
    # DeepSpeed 0.19 calls the deprecated names of these collectives on every step
    warnings.filterwarnings("ignore", message=r".*(reduce_scatter_tensor|all_gather_into_tensor).* is deprecated")
    import deepspeed

    # adopts a group that already exists (Ray Train creates one), else creates it from the environment
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", auto_mpi_discovery=False)
    # Every rank has mapped every rank's shared-memory buffer once all have passed this barrier, so each
    # unlinks its own name now: the memory lives on in the mappings and goes with the last process, even
    # one that is killed, instead of staying in /dev/shm.
    torch_dist.barrier()
    shm_allreduce_buffer(torch_dist.get_rank()).unlink(missing_ok=True)
    return Dist(torch_dist.get_rank(), torch_dist.get_world_size(), local_rank, active=True)


def shm_allreduce_buffer(rank: int, env: dict[str, str] | None = None) -> Path:
    """Rank `rank`'s shared-memory all-reduce buffer (/dev/shm, ~66 MB), which DeepSpeed's CPU comm op
    creates when every rank is on one node and never unlinks (deepspeed/ops/csrc/cpu/comm/shm.cpp: named
    by user id, MASTER_ADDR, MASTER_PORT and rank); `init_distributed` unlinks it once every rank has
    mapped it."""
    env = os.environ if env is None else env
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{env.get('MASTER_ADDR', '')}_{env.get('MASTER_PORT', '')}_{rank}"
    return Path("/dev/shm") / name


def shutdown_distributed(wait_for_peers: bool = False) -> None:
    """Leave the process group (if one exists) before the interpreter exits: a group left to static
    destructors can abort the process at exit ("terminate called without an active exception").

    `wait_for_peers` (a run that ended normally on every rank): a barrier first. A gloo worker thread
    drops its finished collective (and the Python tensors it holds) only once it gets the GIL; if the
    interpreter is already finalising by then, that thread exits mid-destructor and the process aborts
    at exit. Waiting on the barrier, which releases the GIL until every rank arrives, lets it finish.
    Not after an error: a peer that has failed would never arrive."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        if wait_for_peers:
            torch_dist.barrier()
        torch_dist.destroy_process_group()


@contextmanager
def leaving_process_group() -> Iterator[None]:
    """Run the body, then leave the process group (`shutdown_distributed`): after a barrier when the body
    returned, at once when it raised."""
    try:
        yield
    except BaseException:
        shutdown_distributed()
        raise
    shutdown_distributed(wait_for_peers=True)
