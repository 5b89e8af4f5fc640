"""The template process: forks agent processes on request, from a clean pre-trio state.

`Template.start()` runs in `outpost run` BEFORE trio starts and before the
store is opened (an LMDB environment must never cross a fork; trio's threads
and wakeup fds neither). The template is forked from the runtime's own Python
process, so in the PyInstaller binary nothing is re-executed, and it has the
agent API (trio, msgpack, shm, runtime.agents) already imported: a restart is
one fork, not an interpreter start.

Each agent it forks gets its own session and process group (setsid) and
PR_SET_PDEATHSIG(SIGKILL), so it dies with the template, which itself dies
with the runtime. The template is a child subreaper: grandchildren orphaned by
an agent are re-parented to it and reaped, so no zombies pile up. It reaps on
SIGCHLD (a wakeup pipe) at once and reports each agent's exit to the runtime.

To keep the fork itself off a restart's path, the template holds one spare:
a child forked and isolated ahead of time, waiting inside trio.run for a spec
and fds (SCM_RIGHTS); it becomes the next agent (exec or Python) and the
template forks the next spare once it has been idle for 10 ms. A spare never
runs agent code before it is given its agent.

What the two say to each other (SOCK_SEQPACKET, one msgpack message per
packet, fds by SCM_RIGHTS) is runtime.supervisor.template_wire; a malformed
packet is dropped on either side, never a crash.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import faulthandler
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import trio

from runtime.supervisor.template_wire import (
    MAX_FDS,
    MAX_PACKET,
    RUNTIME,
    TEMPLATE,
    Exited,
    Signal,
    Spawn,
    Spawned,
    SpawnFailed,
    TemplateWire,
)
from runtime.wire.errors import RemoteProtocolError
from runtime.wire.framing import CLOSED
from runtime.wire.pending import Pending

log = logging.getLogger("outpost.template")

_TERMINAL = {signal.SIGINT, signal.SIGTERM}  # the template blocks them; agents take them
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_SPARE_DELAY_S = 0.01  # idle time after a spawn before the next spare is forked
_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (and exit now if it already did)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def exec_environment(env: dict[str, str]) -> dict[str, str]:
    """The environment for an executable: in the binary, without PyInstaller's library path.

    The onefile bootloader points LD_LIBRARY_PATH at its unpack dir and keeps
    the user's value in LD_LIBRARY_PATH_ORIG; system programs must get the latter.
    """
    env = dict(env)
    if getattr(sys, "frozen", False):
        orig = env.pop("LD_LIBRARY_PATH_ORIG", None)
        if orig is not None:
            env["LD_LIBRARY_PATH"] = orig
        else:
            env.pop("LD_LIBRARY_PATH", None)
    return env


class Template:
    """The runtime's handle on its template process."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    @classmethod
    def start(cls) -> Template:
        """Fork the template (call before trio.run and before opening the store)."""
        import runtime.agents.process  # noqa: F401  (imported once, inherited by every agent)

        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        runtime_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the template
            parent_sock.close()
            code = 70
            try:
                code = _template_main(child_sock, runtime_pid)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        child_sock.close()
        parent_sock.setblocking(False)
        return cls(pid, parent_sock)

    def close(self) -> None:
        """Close the channel (the template then ends every agent it has and exits) and reap it."""
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


# -- inside the template ----------------------------------------------------------


def _template_main(sock: socket.socket, runtime_pid: int) -> int:
    die_with_parent(runtime_pid)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    # Terminal signals are for the runtime; the template ends when the runtime does.
    # Blocked, not ignored: a child inherits the mask, so a signal sent to an agent
    # forked a moment ago, before it has isolated, stays pending instead of lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, _TERMINAL)
    _warm_up()
    segments: dict[str, Any] = {}  # attached once here, inherited by every agent
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    me = os.getpid()
    wire = TemplateWire(TEMPLATE)  # built once here, inherited by every spare
    agents: set[int] = set()
    # A spare: forked and isolated ahead of time, blocked until it is given an agent,
    # so a restart does not wait for a fork (the next spare is forked after replying).
    spare: list = []

    def fork_spare() -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            mine.close()
            theirs.close()
            return
        if pid == 0:
            mine.close()
            _spare_main(theirs, me, [sock.fileno(), wake_r, wake_w], segments, wire)
        theirs.close()
        spare[:] = [pid, mine]
        _prime(wire)

    def send(event: Spawned | SpawnFailed | Exited) -> None:
        with contextlib.suppress(OSError):
            sock.send(wire.send(event))

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if spare and pid == spare[0]:
                spare[1].close()
                spare.clear()
            if pid in agents:  # grandchildren we adopted are reaped silently
                agents.discard(pid)
                code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
                signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
                send(Exited(pid, code, signum))

    spare_due: float | None = None
    while True:
        reap()
        timeout = None if spare_due is None else max(0.0, spare_due - time.monotonic())
        try:
            readable, _, _ = select.select([sock, wake_r], [], [], timeout)
        except InterruptedError:
            continue
        if spare_due is not None and not readable and time.monotonic() >= spare_due:
            spare_due = None
            if not spare:
                fork_spare()
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
        if sock not in readable:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_PACKET, MAX_FDS)
        except InterruptedError:
            continue
        try:
            event = wire.receive_packet(data)
        except RemoteProtocolError as exc:  # only a bug of the runtime's could send one
            for fd in fds:
                os.close(fd)
            log.warning("template: dropped a malformed packet: %s", exc)
            continue
        if event is CLOSED:  # the runtime is gone or done: take every agent with us
            for pid in agents:
                _signal_agent(pid, signal.SIGKILL)
            if spare:
                with contextlib.suppress(OSError):
                    os.kill(spare[0], signal.SIGKILL)
            return 0
        if isinstance(event, Spawn):
            req, spec = event.req, event.spec
            new_segment = spec.get("segment") and spec["segment"] not in segments
            if new_segment:
                segments[spec["segment"]] = _attach(spec["segment"])
            pid = -1
            if spare and not new_segment:  # (a spare forked before the attach lacks it)
                pid, channel = spare
                spare.clear()
                try:  # the spawn packet as it came: the spare reads it as we did
                    socket.send_fds(channel, [data], fds)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                    pid = -1
                channel.close()
            if pid < 0:
                try:
                    pid = os.fork()
                except OSError as exc:
                    send(SpawnFailed(req, f"fork failed: {exc}"))
                    pid = -1
                if pid == 0:
                    spec["_segment"] = segments.get(spec.get("segment"))
                    _agent_child(spec, fds, me, [sock.fileno(), wake_r, wake_w])
            for fd in fds:
                os.close(fd)
            if pid > 0:
                agents.add(pid)
                send(Spawned(req, pid))
            # The next spare is forked once the new agent had its moment (idle CPU).
            spare_due = time.monotonic() + _SPARE_DELAY_S
        else:
            for fd in fds:
                os.close(fd)
            if event.pid in agents:  # never signal a pid we have reaped (it may be reused)
                _signal_agent(event.pid, event.signum)


_PRIMER = TemplateWire(RUNTIME).send(Spawn(0, {"kind": "exec", "name": "", "cwd": None,
                                                 "env": {}, "argv": [""]}))


def _prime(wire: TemplateWire) -> None:
    """Run the packet path once, idle, right after forking a spare.

    The fork made every page of ours copy-on-write again, and the first write
    to each costs a fault (microseconds on a VM). Decoding and encoding a
    canned spawn now takes those faults for the pages the next spawn touches
    (objects, allocator pools, the Packer's buffer) off a restart's path.
    """
    with contextlib.suppress(Exception):
        event = wire.receive_packet(_PRIMER)
        wire.send(Spawned(event.req, 1))
        wire.send(Exited(1, 0, None))


def _attach(path: str) -> Any:
    """The runtime's segment, mapped read-write (None if it cannot be: the agent retries)."""
    from shm import Segment
    try:
        return Segment.attach(path, writable=True)
    except Exception:
        return None


def _warm_up() -> None:
    """Do once here what every agent would otherwise do after its fork.

    One trio.run (its lazy set-up), the logging handler on stderr (fd 2 is the
    agent's pipe after the fork), the source lines of the frames every agent
    traceback goes through, and gc.freeze() so the collector does not touch
    (and copy-on-write) the template's objects in every child.
    """
    import gc
    import linecache

    import runtime.agents.process as agent_process
    trio.run(trio.sleep, 0)
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s",
                        force=True)
    for module in (agent_process, trio._core._run, contextlib):
        with contextlib.suppress(Exception):
            linecache.getlines(module.__file__)
    gc.freeze()


def _isolate(template_pid: int, close: list[int]) -> None:
    """In a fresh fork: own session and process group, die with the template, clean slate."""
    os.setsid()
    die_with_parent(template_pid)
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _TERMINAL)  # what was sent early lands now
    for fd in close:
        with contextlib.suppress(OSError):
            os.close(fd)


def _signal_agent(pid: int, signum: int) -> None:
    """`signum` to agent `pid`'s process group, or to the agent alone if it has not made
    its group yet (forked a moment ago: the signal waits, blocked, until it isolates)."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)
    except OSError:
        pass


def _wire(spec: dict[str, Any], fds: list[int]) -> None:
    """stdin from /dev/null, stdout/stderr to the runtime's pipes, the working directory."""
    stdout, stderr, *_ = fds
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    for fd in (devnull, stdout, stderr):
        if fd > 2:
            os.close(fd)
    if faulthandler.is_enabled():  # a crash report goes to the agent's captured stderr
        faulthandler.enable(file=sys.stderr)
    if spec.get("cwd"):
        os.chdir(spec["cwd"])


def _become(spec: dict[str, Any], fds: list[int]) -> int:
    """Wire up the fds, then exec the command or run the Python agent."""
    _wire(spec, fds)
    if spec["kind"] == "exec":
        env = exec_environment({**os.environ, **spec.get("env", {})})
        argv = spec["argv"]
        try:
            os.execvpe(argv[0], argv, env)  # noqa: S606 - argv from the config
        except OSError as exc:
            os.write(2, f"outpost: cannot execute {argv[0]!r}: {exc.strerror}\n".encode())
            return 127 if exc.errno == errno.ENOENT else 126
    os.environ.update(spec.get("env", {}))
    from runtime.agents.process import agent_main
    return agent_main(spec, fds[2], spec.pop("_segment", None))


async def _spare_wait(channel: socket.socket, segments: dict[str, Any],
                      wire: TemplateWire) -> int:
    from runtime.agents.process import agent_main_async, idle_connection
    conn = idle_connection()  # built while idle: not on the restart's path
    await trio.lowlevel.wait_readable(channel.fileno())
    data, fds, _, _ = socket.recv_fds(channel, MAX_PACKET, MAX_FDS)
    channel.close()
    event = wire.receive_packet(data)
    if event is CLOSED:  # the template is gone or done
        return 0
    spec = event.spec
    if spec["kind"] == "exec":
        return _become(spec, fds)
    _wire(spec, fds)
    os.environ.update(spec.get("env", {}))
    code = await agent_main_async(spec, fds[2], segments.get(spec.get("segment")), conn)
    # The agent is done and has said so: exit now rather than after trio's teardown
    # (the supervisor restarts it once this process is gone).
    _leave(code)


def _leave(code: int) -> NoReturn:
    """End a forked child: flush what it printed, then _exit (never unwind into the
    template's stack, never run the parent's atexit handlers)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _run_child(work: Callable[[], int]) -> NoReturn:
    """Run a forked child's `work` and leave with its exit code (70 if it raised)."""
    code = 70
    try:
        code = work()
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        _leave(code)


def _agent_child(spec: dict[str, Any], fds: list[int], template_pid: int,
                 close: list[int]) -> None:
    """In the freshly forked agent: isolate, wire up fds, then exec or run the agent."""
    def work() -> int:
        _isolate(template_pid, close)
        return _become(spec, fds)
    _run_child(work)


def _spare_main(channel: socket.socket, template_pid: int, close: list[int],
                segments: dict[str, Any], wire: TemplateWire) -> None:
    """A spare: isolated now, waits for its agent's spec and fds, then becomes it.

    It waits inside trio.run, so a Python agent starts in a loop that is already
    up (trio's start-up is not on the restart path).
    """
    def work() -> int:
        _isolate(template_pid, close)
        return trio.run(_spare_wait, channel, segments, wire)
    _run_child(work)


# -- the runtime's side, under trio --------------------------------------------------


class TemplateGone(Exception):
    """The template process exited: no process or exec agent can be started."""


def _gone() -> TemplateGone:
    return TemplateGone("the template process is gone")


class TemplateClient:
    """Async access to the template from the runtime's trio loop.

    `run()` reads the template's reports; `spawn()` asks for a new agent
    process and returns its pid; `wait_exit(pid)` returns (code, signal) once
    the template has reaped it; `signal(pid, signum)` signals its process group
    (only while it is unreaped, so a recycled pid is never hit). When the
    template dies (or `run` ends), every waiter wakes: a spawn with
    TemplateGone, an exit with (None, SIGKILL), since its agents died with it.
    """

    def __init__(self, template: Template) -> None:
        self.template = template
        self.sock = trio.socket.from_stdlib_socket(template.sock)
        self._wire = TemplateWire(RUNTIME)
        self._req = 0
        self._spawns: Pending[int, Spawned | SpawnFailed] = Pending()
        self._exits: dict[int, tuple[int | None, int | None]] = {}  # reported, not yet awaited
        self._exit_waiters: Pending[int, tuple[int | None, int | None]] = Pending()
        self._forgotten: set[int] = set()
        self._send_lock = trio.Lock()
        self.gone = False

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        closed = False
        try:
            while True:
                data = await self.sock.recv(MAX_PACKET)
                try:
                    event = self._wire.receive_packet(data)
                except RemoteProtocolError as exc:  # dropped: the next packet is whole
                    log.error("template: dropped a malformed report: %s", exc)
                    continue
                if event is CLOSED:
                    closed = True
                    break
                if isinstance(event, Exited):
                    pid = event.pid
                    if pid in self._forgotten:
                        self._forgotten.discard(pid)
                    elif not self._exit_waiters.resolve(pid, (event.code, event.signum)):
                        self._exits[pid] = (event.code, event.signum)
                else:
                    self._spawns.resolve(event.req, event)
        finally:
            self.gone = True
            self._spawns.fail_all(_gone)
            self._exit_waiters.fail_all(_gone)
            if closed:
                log.error("the template process exited; process and exec agents cannot start")

    async def _send(self, event: Spawn | Signal, fds: list[int] = ()) -> None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        async with self._send_lock:  # encoded in the lock: packets go out in send order
            await self.sock.sendmsg([self._wire.send(event)], ancillary)

    async def spawn(self, spec: dict[str, Any], fds: list[int]) -> int:
        """Fork an agent described by `spec` with `fds` (stdout, stderr[, channel]); its pid."""
        self._req += 1
        req = self._req
        with self._spawns.expect(req) as slot:  # TemplateGone if the template is gone
            await self._send(Spawn(req, spec), fds)
            answer = await slot.wait()
        if isinstance(answer, SpawnFailed):
            raise OSError(answer.why)
        return answer.pid

    async def wait_exit(self, pid: int) -> tuple[int | None, int | None]:
        """(exit code, signal) of `pid` once reaped."""
        exit = self._exits.pop(pid, None)
        if exit is not None:
            return exit
        try:
            with self._exit_waiters.expect(pid) as slot:
                return await slot.wait()
        except TemplateGone:
            return None, signal.SIGKILL  # died with the template

    def forget(self, pid: int) -> None:
        """Nobody will wait for `pid`'s exit report: drop it (now or when it comes)."""
        if self._exits.pop(pid, None) is None:
            self._forgotten.add(pid)

    async def signal(self, pid: int, signum: int) -> None:
        """Send `signum` to the process group of agent `pid` (ignored once it was reaped)."""
        if not self.gone and self._wire.alive(pid):
            with contextlib.suppress(OSError):
                await self._send(Signal(pid, int(signum)))
