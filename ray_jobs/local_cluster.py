"""A one-node Ray cluster on loopback, for tests and benchmarks on one machine (docs/cluster.md, section 8.7).

Every Ray process stays on 127.0.0.1 and belongs to the head's process group, so stopping it kills
exactly what was started (never `ray stop`, which would stop other clusters on the machine too).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from trainer.distributed import free_port

BIN = Path(sys.executable).parent
PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")


def start_local_cluster(temp_dir: Path, num_cpus: int, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """(the head process, its dashboard address for `ray job submit --address`), once it answers.

    `temp_dir` must be short: Ray's socket paths must stay under 108 characters."""
    ports = {name: free_port() for name in PORT_FLAGS}
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", OMP_NUM_THREADS="1",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             "--dashboard-host=127.0.0.1", f"--num-cpus={num_cpus}", "--disable-usage-stats",
                             f"--temp-dir={temp_dir}", *(f"--{name}={port}" for name, port in ports.items())],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"the Ray head exited with status {head.returncode}")
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                return head, address
        except OSError:
            time.sleep(0.5)
    stop_local_cluster(head)
    raise TimeoutError(f"{address} did not answer within {timeout} s")


def stop_local_cluster(head: subprocess.Popen) -> None:
    """Kill the cluster's whole process group, then reap the head."""
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait(timeout=30)
