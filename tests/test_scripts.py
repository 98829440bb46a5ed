"""scripts/deepspeed_multi_node.sh picks MASTER_ADDR, with ssh and without (`--no-ssh --node-rank N`),
and checks its flags, without launching anything (`--print-master-addr`)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "deepspeed_multi_node.sh"


NO_SSH = ("--no-ssh", "--node-rank", "0")


def _master_addr(hostfile: Path, master_addr: str | None = None, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MASTER_ADDR"}
    if master_addr is not None:
        env["MASTER_ADDR"] = master_addr
    return subprocess.run(["bash", str(SCRIPT), "--print-master-addr", *flags, str(hostfile)], env=env,
                          capture_output=True, text=True, timeout=30)


def _hostfile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts"
    path.write_text(text, encoding="utf-8")
    return path


def test_explicit_master_addr_wins(tmp_path: Path) -> None:
    proc = _master_addr(_hostfile(tmp_path, "node-a.invalid slots=8\nnode-b.invalid slots=8\n"), "10.1.2.3")
    assert (proc.returncode, proc.stdout) == (0, "10.1.2.3\n"), proc.stderr


@pytest.mark.skipif(shutil.which("ip") is None or shutil.which("getent") is None, reason="needs ip and getent")
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_default_is_the_source_address_of_the_route_to_the_first_host(tmp_path: Path, host: str) -> None:
    """Not `hostname -I`: the route to 127.0.0.1 (named or resolved) leaves from 127.0.0.1."""
    proc = _master_addr(_hostfile(tmp_path, f"# comment\n  {host} slots=2\n"))
    assert (proc.returncode, proc.stdout) == (0, "127.0.0.1\n"), proc.stderr


@pytest.mark.skipif(shutil.which("ip") is None or shutil.which("getent") is None, reason="needs ip and getent")
@pytest.mark.parametrize("flags", [(), NO_SSH], ids=["ssh", "no-ssh"])
@pytest.mark.parametrize("hosts", ["no-such-host.invalid slots=1\n", "127.0.0.1 slots=1\nnode-b.invalid slots=1\n"],
                         ids=["unresolvable", "loopback-with-other-hosts"])
def test_no_usable_address_fails_naming_master_addr(tmp_path: Path, hosts: str, flags: tuple[str, ...]) -> None:
    proc = _master_addr(_hostfile(tmp_path, hosts), flags=flags)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "set MASTER_ADDR" in proc.stderr


def test_without_ssh_every_node_defaults_to_the_first_host_itself(tmp_path: Path) -> None:
    """Node 1 points at the first host's address, not at the source of its own route there."""
    hosts = _hostfile(tmp_path, "192.0.2.10 slots=1\n192.0.2.11 slots=1\n")
    proc = _master_addr(hosts, flags=("--no-ssh", "--node-rank", "1"))
    assert (proc.returncode, proc.stdout) == (0, "192.0.2.10\n"), proc.stderr


@pytest.mark.parametrize("flags, message", [
    (("--no-ssh",), "--no-ssh and --node-rank N go together"),
    (("--node-rank", "0"), "--no-ssh and --node-rank N go together"),
    (("--no-ssh", "--node-rank", "2"), "--node-rank must be 0 to 1"),
    (("--no-ssh", "--node-rank", "first"), "--node-rank must be 0 to 1"),
    (("--no-shh",), "usage:"),
])
def test_bad_node_flags_are_refused(tmp_path: Path, flags: tuple[str, ...], message: str) -> None:
    proc = _master_addr(_hostfile(tmp_path, "192.0.2.10 slots=1\n192.0.2.11 slots=1\n"), "10.1.2.3", flags)
    assert proc.returncode == 2 and proc.stdout == "" and message in proc.stderr
