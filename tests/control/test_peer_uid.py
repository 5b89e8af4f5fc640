"""Another uid cannot control the runtime: the 0700/0600 modes stop it at the file
system, and if those are opened up, SO_PEERCRED stops it at the server.

The foreign client runs as `nobody` through setpriv, with the system python and
the standard library only (the venv lives under /root, which nobody cannot read):
it sends pre-encoded frames and hands back the raw bytes it received.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.control.protocol import (
    CLIENT,
    CLOSED,
    NEED_DATA,
    Connection,
    ErrorResponse,
    Hello,
    Request,
    Response,
)
from tests.runtime_proc import ROOT, RuntimeProc, agent_block, wait_for, write_config

COUNTER = agent_block("counter", str(ROOT / "examples" / "agents" / "counter.py") + ":run")
SYSTEM_PYTHON = "/usr/bin/python3"
RAW_CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect_error": type(exc).__name__}))
    sys.exit(0)
s.sendall(bytes.fromhex(sys.argv[2]))
s.shutdown(socket.SHUT_WR)
data = b""
while chunk := s.recv(65536):
    data += chunk
print(json.dumps({"received": data.hex()}))
"""


def _why_not() -> str | None:
    if os.getuid() != 0:
        return "needs root to run a client as another uid (setpriv --reuid=nobody)"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is needed to run the foreign client"
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return "there is no user `nobody`"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")
NOBODY = pwd.getpwnam("nobody").pw_uid if _why_not() is None else -1
NOGROUP = grp.getgrnam("nogroup").gr_gid if _why_not() is None else -1


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory nobody can traverse (pytest's tmp_path is under a 0700 dir)."""
    path = Path(tempfile.mkdtemp(prefix="outpost-uid-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(socket_path: Path, payload: bytes) -> dict:
    """Run the raw client as nobody:nogroup with no supplementary groups."""
    result = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         SYSTEM_PYTHON, "-I", "-c", RAW_CLIENT, str(socket_path), payload.hex()],
        capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def decode(data: bytes) -> list:
    """The events in what the server sent back to the foreign client."""
    conn = Connection(CLIENT)
    conn.send(Hello())
    conn.send(Request(1, "status", {}))
    conn.receive_data(data)
    conn.receive_data(b"")
    events = []
    while (event := conn.next_event()) not in (NEED_DATA, CLOSED):
        events.append(event)
    return events


def hello_and_status() -> bytes:
    conn = Connection(CLIENT)
    return conn.send(Hello()) + conn.send(Request(1, "status", {}))


def start(directory: Path, start_runtime, extra: str = "") -> RuntimeProc:
    rt = start_runtime(write_config(directory, COUNTER, extra))
    rt.wait_running("counter")
    return rt


def test_modes_keep_another_uid_out(shared_dir: Path, start_runtime) -> None:
    rt = start(shared_dir, start_runtime)
    assert as_nobody(rt.socket, hello_and_status()) == {"connect_error": "PermissionError"}
    with rt.client() as c:
        assert c.call("info")["control"]["refused"] == 0  # never reached the server


def test_so_peercred_refuses_another_uid_and_logs_it(shared_dir: Path, start_runtime) -> None:
    rt = start(shared_dir, start_runtime)
    # Open the file-system door on purpose: now only the server's check stands.
    rt.socket.parent.chmod(0o755)
    rt.socket.chmod(0o666)
    said = decode(bytes.fromhex(as_nobody(rt.socket, hello_and_status())["received"]))
    assert len(said) == 1 and isinstance(said[0], ErrorResponse), said
    assert said[0].code == "forbidden"
    assert f"uid {NOBODY} may not control this runtime" in said[0].message
    assert "allowed_uids" in said[0].message  # says how to allow it
    wait_for(lambda: "refused connection from pid" in rt.log()
             and f"uid {NOBODY}" in rt.log(), what="the refusal in the runtime's log")
    with rt.client() as c:
        assert c.call("info")["control"]["refused"] == 1
        assert c.call("status")["agents"][0]["state"] == "running"


@pytest.mark.parametrize("allow", ["allowed_uids", "allowed_gids"])
def test_configured_uid_or_gid_is_let_in(shared_dir: Path, start_runtime, allow: str) -> None:
    who = NOBODY if allow == "allowed_uids" else NOGROUP
    rt = start(shared_dir, start_runtime, f"[control]\n{allow} = [{who}]\n")
    rt.socket.parent.chmod(0o755)
    rt.socket.chmod(0o666)
    said = decode(bytes.fromhex(as_nobody(rt.socket, hello_and_status())["received"]))
    assert isinstance(said[0], Hello) and isinstance(said[1], Response), said
    assert said[1].result["agents"][0]["name"] == "counter"
