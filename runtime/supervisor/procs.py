"""OS-process plumbing for process and exec agents: output capture, sd_notify, pid records.

- Output: stdout/stderr are pipes read line by line; each line becomes an
  `output` event and a line in `<logs_dir>/<agent>.log`, rotated at
  `log_max_bytes` keeping `log_keep` old files.
- sd_notify: a datagram socket in the abstract namespace, passed in
  NOTIFY_SOCKET. Datagrams are accepted only from the agent's process group
  (SCM_CREDENTIALS), so another local process cannot mark it ready.
- Pid records: every live agent process is recorded (pid, process group,
  start time) in `<data_dir>/agent-pids.json`. After a kill -9 of the runtime
  the next start ends whatever is left of those groups (checked with psutil,
  so a recycled pid is never killed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import trio

log = logging.getLogger("outpost.supervisor")

MAX_LINE = 8192  # longer lines are split; a program cannot make us buffer without bound
PID_FILE = "agent-pids.json"


class RotatingLog:
    """A size-capped log file with numbered predecessors (<name>.log.1 is the newest old one)."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")  # noqa: SIM115 - held for the agent's lifetime
        self._size = self._file.tell()

    def write(self, line: bytes) -> None:
        if self._size + len(line) > self.max_bytes and self._size > 0:
            self._rotate()
        self._file.write(line)
        self._file.flush()
        self._size += len(line)

    def _rotate(self) -> None:
        self._file.close()
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            for n in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        self._file.close()


async def pump_lines(fd: int, stream: str, on_line: Callable[[str, bytes], None]) -> None:
    """Read `fd` until EOF, calling `on_line(stream, line)` per line (split at MAX_LINE)."""
    buf = b""
    async with trio.lowlevel.FdStream(fd) as pipe:
        while True:
            data = await pipe.receive_some(65536)
            if not data:
                break
            buf += data
            while True:
                cut = buf.find(b"\n")
                if cut < 0:
                    if len(buf) < MAX_LINE:
                        break
                    cut = MAX_LINE - 1
                on_line(stream, buf[:cut + 1])
                buf = buf[cut + 1:]
    if buf:
        on_line(stream, buf + b"\n")


_UCRED = struct.Struct("iII")


def open_notify_socket(tag: str) -> tuple[trio.socket.SocketType, str]:
    """A datagram socket for sd_notify in the abstract namespace; (socket, NOTIFY_SOCKET)."""
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    name = f"outpost-{os.getpid()}-{tag}"
    raw.bind("\0" + name)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return trio.socket.from_stdlib_socket(raw), "@" + name


async def read_notify(sock: trio.socket.SocketType, pgid: int,
                      on_field: Callable[[str, str], None]) -> None:
    """Feed each KEY=VALUE line of datagrams sent from process group `pgid` to `on_field`."""
    while True:
        data, ancdata, _, _ = await sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        sender = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender = _UCRED.unpack(payload[:_UCRED.size])[0]
        try:
            if sender is None or (sender != pgid and os.getpgid(sender) != pgid):
                continue
        except OSError:
            continue  # the sender is already gone; cannot tell whose it was
        for line in data.decode("utf-8", "replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                on_field(key.strip(), value)


def descendants(pid: int) -> list[psutil.Process]:
    """`pid`'s descendants now (they may have left its process group)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


class ChildMap:
    """parent pid -> child pids from one scan of /proc, shared for `ttl` seconds.

    psutil's children() rescans every process on each call; the health sampler
    asks for every agent each round, so one scan per round serves them all.
    Thread-safe enough for its use: a stale map only delays a descendant's
    discovery by one round.
    """

    def __init__(self, ttl: float = 0.25) -> None:
        self.ttl = ttl
        self._at = -1e9
        self._children: dict[int, list[int]] = {}

    def _scan(self) -> dict[int, list[int]]:
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # comm may hold spaces and ')': the ppid follows the last ')'.
            fields = stat[stat.rfind(b")") + 2:].split()
            if len(fields) > 1:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
        return children

    def descendants(self, pid: int) -> list[int]:
        now = time.monotonic()
        if now - self._at > self.ttl:
            self._children, self._at = self._scan(), now
        out, todo = [], [pid]
        while todo:
            for child in self._children.get(todo.pop(), ()):
                out.append(child)
                todo.append(child)
        return out


def kill_all(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()


class PidRecord:
    """`<data_dir>/agent-pids.json`: what a killed runtime's successor must end.

    {agent: [pid (= its pgid), create_time, [[descendant pid, create_time], ...]]};
    descendants are the ones seen by the health sampler, so a grandchild that
    left the agent's process group (setsid) is found too once it was sampled.
    """

    def __init__(self, data_dir: Path | None) -> None:
        self.path = None if data_dir is None else Path(data_dir) / PID_FILE
        self.live: dict[str, list] = {}
        self._dirty = False

    def add(self, agent: str, pid: int) -> None:
        """Note a new agent process; written by `flush` (the health sampler calls it at
        once, off the restart path: until then PDEATHSIG covers the agent itself)."""
        self.live[agent] = [pid, None, []]
        self._dirty = True

    def flush(self) -> None:
        """Write the record if it changed (start times looked up with psutil)."""
        if not self._dirty:
            return
        for entry in self.live.values():
            if entry[1] is None:
                try:
                    entry[1] = psutil.Process(entry[0]).create_time()
                except psutil.Error:
                    entry[1] = 0.0
        self._save()

    def set_descendants(self, agent: str, found: list[list]) -> None:
        """Record `agent`'s current descendants ([pid, create_time] pairs) if they changed."""
        entry = self.live.get(agent)
        if entry is not None and sorted(entry[2]) != sorted(found):
            entry[2] = found
            self._dirty = True
        self.flush()

    def remove(self, agent: str) -> None:
        """Forget an agent that exited. Not written at once (off the restart path): a
        stale entry is harmless, the sweep checks start times."""
        self.live.pop(agent, None)

    def _save(self) -> None:
        self._dirty = False
        if self.path is None:
            return
        tmp = self.path.with_name(PID_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(self.live))
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("cannot record agent pids in %s: %s", self.path, exc)

    def end_leftovers(self) -> list[int]:
        """Kill what a previous runtime's agents left running; the pids killed.

        Called at start-up with the data-dir lock held, so the recorded agents
        cannot belong to a live runtime. A process counts as left over if it is
        in a recorded process group and started no earlier than that group's
        leader did (a recycled pid or pgid started before is left alone).
        """
        if self.path is None or not self.path.exists():
            return []
        try:
            recorded = json.loads(self.path.read_text())
        except (OSError, ValueError):
            recorded = {}
        groups, exact = {}, {}
        for entry in recorded.values():
            groups[int(entry[0])] = float(entry[1])
            for pid, created in entry[2] if len(entry) > 2 else []:
                exact[int(pid)] = float(created)
        killed = []
        for proc in psutil.process_iter(["pid", "create_time"]):
            if exact.get(proc.pid) == proc.info["create_time"]:
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                continue
            try:
                pgid = os.getpgid(proc.pid)
            except OSError:
                continue
            created = groups.get(pgid)
            if created is None or proc.pid == os.getpid():
                continue
            if proc.info["create_time"] + 0.01 >= created:
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
        self.live = {}
        self._save()
        return killed
