"""Runners: each runs one instance of an agent, `await runner.run_once(child, report)` -> Exit.

- `TaskRunner`: a `task` agent, a coroutine in the runtime's own trio loop.
- `ProcessRunner`: a `process` or `exec` agent, one OS process forked by the
  template process, supervised until it is reaped: its channel (process) or
  sd_notify socket (exec), its output, its pid record, its health.

`report` is called once the instance is started (or could not be), so the
group's `nursery.start` returns; `stop_instance` ends a running instance,
gracefully then by force. Neither decides what follows an exit: that is the
policy's (runtime.supervisor.policy).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from runtime.agents import load_entry, state_stream, wire
from runtime.config import AgentSpec
from runtime.supervisor import procs
from runtime.supervisor.channel import ChannelServer
from runtime.supervisor.health import Health
from runtime.supervisor.metrics import Metrics
from runtime.supervisor.policy import Exit, exc_summary
from runtime.supervisor.tree import STARTING, Child

log = logging.getLogger("outpost.supervisor")

MakeContext = Callable[[AgentSpec], Awaitable[Any]]
CHANNEL_GRACE_S = 0.2  # after an exit, how long to wait for its last frame (its exception)


class _Runner:
    """What every kind of instance shares: the check before a start, the events of its
    start and its readiness."""

    def __init__(self, emit: Callable[..., None], health: Health,
                 check: Callable[[str], str | None] = lambda name: None) -> None:
        self._emit = emit
        self._health = health
        self._check = check  # why an agent must not start (a release failing verification)

    def started(self, child: Child, pid: int, report: Callable[[], None]) -> None:
        child.mark_started(pid)
        log.info("agent %s started (pid %d, restarts %d)", child.name, pid, child.restarts)
        self._emit("start", child.name, pid=pid, kind=child.spec.kind, restarts=child.restarts,
                   group=child.path)
        report()

    def mark_ready(self, child: Child, via: str) -> None:
        if not child.ready.is_set():
            child.ready.set()
            self._emit("ready", child.name, via=via)

    async def run_once(self, child: Child, report: Callable[[], None]) -> Exit:
        raise NotImplementedError

    async def run(self, child: Child, report: Callable[[], None]) -> Exit:
        """`run_once`, contained (a bug of ours is the instance's failure, not the
        runtime's), its exit logged and emitted."""
        child.state = STARTING
        refused = self._check(child.name)
        if refused is not None:
            log.error("agent %s not started: %s", child.name, refused)
            self._emit("release-refused", child.name, reason=refused)
            report()
            exit = Exit(True, f"could not start: {refused}")
        else:
            try:
                exit = await self.run_once(child, report)
            except Exception as exc:
                log.exception("agent %s: supervisor error", child.name)
                report()
                exit = Exit(True, f"supervisor error: {exc_summary(exc)}")
        child.last_exit = exit.summary
        log.log(logging.ERROR if exit.failed else logging.INFO, "agent %s %s", child.name,
                exit.summary)
        uptime = child.record.uptime(trio.current_time())
        self._emit("exit", child.name, pid=child.pid, **exit.fields(),
                   uptime_s=None if uptime is None else round(uptime, 6))
        child.pid = None
        return exit


class TaskRunner(_Runner):
    """Runs `task` agents: `await main(ctx)` inside a cancel scope of the runner's task."""

    def __init__(self, emit: Callable[..., None], health: Health,
                 make_context: MakeContext, check: Callable[[str], str | None]) -> None:
        super().__init__(emit, health, check)
        self._make_context = make_context
        self._entries: dict[str, tuple[tuple, Any]] = {}

    def _load(self, entry: str) -> Any:
        """The agent function, re-imported only when its file changed (fast restarts)."""
        target = entry.rpartition(":")[0]
        key: tuple = ()
        if target.endswith(".py"):
            with contextlib.suppress(OSError):
                st = os.stat(target)
                key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._entries.get(entry)
        if cached is not None and cached[0] == key and key:
            return cached[1]
        func = load_entry(entry)
        self._entries[entry] = (key, func)
        return func

    async def run_once(self, child: Child, report: Callable[[], None]) -> Exit:
        """Run one instance of task agent `child` until it returns, raises or is cancelled."""
        spec = child.spec
        try:
            ctx = await self._make_context(spec)
            main = self._load(spec.entry)
        except Exception as exc:
            report()
            return Exit(True, f"could not start: {exc_summary(exc)}",
                        exception=exc_summary(exc))
        self.started(child, os.getpid(), report)
        if getattr(ctx, "is_ready", None) is not None and ctx.is_ready.is_set():
            self.mark_ready(child, "ctx.ready()")
        else:
            ctx.on_ready = lambda: self.mark_ready(child, "ctx.ready()")
        exit: Exit | None = None
        with trio.CancelScope() as scope:
            child.scope = scope
            try:
                if spec.heartbeat_timeout_s or spec.max_runtime_s:
                    async with trio.open_nursery() as helpers:
                        helpers.start_soon(self._health.watch, child, None)
                        await main(ctx)
                        helpers.cancel_scope.cancel()
                else:  # no helper task: the fastest restart path
                    await main(ctx)
                exit = Exit(False, "returned")
            except Exception as exc:
                log.debug("agent %s raised", child.name, exc_info=True)
                exit = Exit(True, f"raised {exc_summary(exc)}", exception=exc_summary(exc))
        child.scope = None
        if exit is None:
            if child.kill_reason is not None:
                exit = Exit(True, f"cancelled by the supervisor: {child.kill_reason}")
            else:
                exit = Exit(False, "stopped", stopped=True)
        return exit

    async def stop_instance(self, child: Child) -> None:
        """Cancel the running instance (its exit follows when its scope unwinds)."""
        if child.scope is not None:
            child.scope.cancel()


class ProcessRunner(_Runner):
    """Runs `process` and `exec` agents: processes forked by the template, until reaped."""

    def __init__(self, emit: Callable[..., None], health: Health, metrics: Metrics, *,
                 template: Any, book: Any, segment: Any, mailboxes: Any, pids: procs.PidRecord,
                 log_dir: Path | None, log_level: str,
                 check: Callable[[str], str | None] = lambda name: None) -> None:
        super().__init__(emit, health, check)
        self.template = template
        self.book = book
        self.segment = segment
        self.pids = pids
        self.log_dir = log_dir
        self.log_level = log_level
        self.channel = ChannelServer(book, mailboxes, metrics, emit, self.mark_ready)
        # The supervisor's own nursery, for output pumps that outlive an instance.
        self.nursery: trio.Nursery | None = None
        self._notify_seq = 0
        self._logfiles: dict[str, procs.RotatingLog] = {}

    def release(self, name: str) -> None:
        """Close agent `name`'s log file: it stopped for good (not just restarting)."""
        logfile = self._logfiles.pop(name, None)
        if logfile is not None:
            logfile.close()

    async def stop_instance(self, child: Child) -> None:
        """SIGTERM, then SIGKILL after `shutdown_timeout_s`; descendants that left the
        process group are killed too."""
        spec = child.spec
        leftovers = procs.descendants(child.pid) if child.pid else []
        await child.signal_instance(signal.SIGTERM)
        with trio.move_on_after(spec.shutdown_timeout_s):
            await child.done.wait()
        if not child.done.is_set():
            log.warning("agent %s did not stop within %.1fs: SIGKILL", child.name,
                        spec.shutdown_timeout_s)
            self._emit("kill", child.name, reason="shutdown timeout",
                       timeout_s=spec.shutdown_timeout_s)
            if child.signal_instance is not None:
                await child.signal_instance(signal.SIGKILL)
        procs.kill_all(leftovers)  # descendants that left the process group

    def _output_sink(self, child: Child) -> tuple[Callable[[str, bytes], None], Any]:
        logfile = self._logfiles.get(child.name)
        spec = child.spec
        if logfile is not None and (logfile.max_bytes, logfile.keep) != (spec.log_max_bytes,
                                                                         spec.log_keep):
            logfile.close()
            logfile = None
        if logfile is None and self.log_dir is not None:
            try:  # kept open across restarts (closed when the agent stops for good)
                logfile = self._logfiles[child.name] = procs.RotatingLog(
                    Path(self.log_dir) / f"{child.name}.log", spec.log_max_bytes, spec.log_keep)
            except OSError as exc:
                log.warning("agent %s: no log file: %s", child.name, exc)

        def on_line(stream: str, line: bytes) -> None:
            if logfile is not None:
                with contextlib.suppress(OSError, ValueError):
                    logfile.write(line)
            self._emit("output", child.name, stream=stream,
                       line=line.rstrip(b"\n").decode("utf-8", "replace"))
        return on_line, logfile

    async def run_once(self, child: Child, report: Callable[[], None]) -> Exit:
        """A process or exec agent: one process forked by the template, until it is reaped."""
        spec = child.spec
        if self.template is None:
            report()
            return Exit(True, "could not start: no template process (process and exec agents "
                        "need `outpost run`)")
        env = dict(spec.env)
        request: dict[str, Any] = {"kind": spec.kind, "name": spec.name, "cwd": spec.cwd,
                                   "env": env}
        # Awaited before any fd exists: a cancellation here leaks nothing.
        state = await self.book.open(state_stream(spec.name)) if spec.kind == "process" \
            else None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        fds = [out_w, err_w]
        mine: socket.socket | None = None
        theirs: socket.socket | None = None
        notify: Any = None
        if spec.kind == "process":
            mine, theirs = socket.socketpair()
            fds.append(theirs.fileno())
            request.update(entry=spec.entry, segment=str(self.segment.path),
                           log_level=self.log_level)
        else:
            request["argv"] = list(spec.command)
            self._notify_seq += 1
            notify, env["NOTIFY_SOCKET"] = procs.open_notify_socket(
                f"{spec.name}-{self._notify_seq}")
            if spec.heartbeat_timeout_s:
                env["WATCHDOG_USEC"] = str(int(spec.heartbeat_timeout_s * 1e6))
        hello = b""
        conn = None
        try:
            if mine is not None:  # in the socket buffer before the fork: no round trip
                conn = wire.Connection(wire.RUNTIME)
                hello = conn.send(wire.Hello(state.to_dict()))
                mine.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    hello = hello[mine.send(hello):]
            # Shielded: a spawn cannot be withdrawn once asked for, and a process we
            # never learnt the pid of would run unsupervised. A stop lands right after.
            with trio.CancelScope(shield=True):
                pid = await self.template.spawn(request, fds)
        except Exception as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            for s in (mine, notify):
                if s is not None:
                    s.close()
            report()
            return Exit(True, f"could not start: {exc_summary(exc)}")
        finally:
            for fd in (out_w, err_w):
                os.close(fd)
            if theirs is not None:
                theirs.close()
        self.started(child, pid, report)
        template = self.template
        try:  # the kernel tells us of the exit directly, without the template's round trip
            pidfd = os.pidfd_open(pid) if spec.kind == "process" else None
        except OSError:
            pidfd = None

        async def signal_instance(signum: int) -> None:
            await template.signal(pid, signum)
        child.signal_instance = signal_instance
        self.pids.add(child.name, pid)
        on_line, _ = self._output_sink(child)
        reported: dict[str, Any] = {}
        code = signum = None
        try:
            async with trio.open_nursery() as helpers:
                channel_done = trio.Event()
                # Output is pumped until EOF outside this instance: its last lines (a
                # traceback, say) never hold up the restart.
                assert self.nursery is not None
                self.nursery.start_soon(procs.pump_lines, out_r, "stdout", on_line)
                self.nursery.start_soon(procs.pump_lines, err_r, "stderr", on_line)
                if mine is not None:
                    helpers.start_soon(self.channel.serve, child, mine, conn, reported,
                                       channel_done, hello)
                else:
                    channel_done.set()
                    helpers.start_soon(self._serve_notify, child, notify, pid)
                    if not spec.notify:
                        self.mark_ready(child, "start")
                helpers.start_soon(self._health.watch, child, pid)
                try:
                    code, signum = await self._wait_exit(pid, pidfd, reported, channel_done)
                finally:
                    child.signal_instance = None
                    if code is None and signum is None:  # cancelled while it runs: kill it
                        with trio.CancelScope(shield=True):
                            await template.signal(pid, signal.SIGKILL)
                            code, signum = await template.wait_exit(pid)
                self.pids.remove(child.name)
                with trio.move_on_after(CHANNEL_GRACE_S):
                    await channel_done.wait()  # its last frame (the exception) is in
                helpers.cancel_scope.cancel()
        finally:
            if notify is not None:
                notify.close()
            if pidfd is not None:
                os.close(pidfd)
        exception = reported.get("exception")
        if child.kill_reason is not None:
            return Exit(True, f"killed by the supervisor: {child.kill_reason}", code, signum,
                        exception)
        if signum is not None:
            name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ \
                else str(signum)
            stopped = child.stopping and signum in (signal.SIGTERM, signal.SIGKILL)
            return Exit(not stopped, f"killed by {name}", None, signum, exception, stopped)
        if code == 0:
            return Exit(False, "exited 0", 0, None, None, child.stopping)
        summary = f"raised {exception}" if exception else f"exited {code}"
        return Exit(not child.stopping, summary, code, None, exception, child.stopping)

    async def _wait_exit(self, pid: int, pidfd: int | None, reported: dict,
                         channel_done: trio.Event) -> tuple[int | None, int | None]:
        """(code, signal) of agent `pid` once it has exited.

        A process agent's last frame says whether it returned or raised, which
        fixes its exit code (agent_main returns 0 or 1); with that and the pidfd
        turning readable (the process is gone) the template's report is not
        waited for. Anything else (a signal, os._exit) comes from the template.
        """
        if pidfd is not None:
            await trio.lowlevel.wait_readable(pidfd)
            with trio.move_on_after(0.05):
                await channel_done.wait()
            if "exception" in reported:
                self.template.forget(pid)
                return (0 if reported["exception"] is None else 1), None
        return await self.template.wait_exit(pid)

    async def _serve_notify(self, child: Child, sock: Any, pgid: int) -> None:
        """sd_notify from an exec agent: READY=1, WATCHDOG=1, STATUS=..., STOPPING=1."""
        beat = None
        if self.segment is not None:
            from shm import Heartbeat
            with contextlib.suppress(Exception):
                beat = Heartbeat(self.segment, f"{child.name}:heartbeat").beat

        def on_field(key: str, value: str) -> None:
            if key == "READY" and value == "1":
                self.mark_ready(child, "sd_notify")
            elif key == "WATCHDOG" and value == "1":
                if beat is not None:
                    beat()
            elif key == "STATUS":
                child.status_text = value[:200]
                self._emit("status", child.name, status=child.status_text)
            elif key == "STOPPING" and value == "1":
                self._emit("stopping", child.name)
        await procs.read_notify(sock, pgid, on_field)

