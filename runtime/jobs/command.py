"""Running one configured command: its own process group, a timeout, bounded output.

Used by command jobs and by rules' `exec NAME` actions. The argv always comes from
the config, never from an event. At the timeout the whole process group gets
SIGTERM, then SIGKILL after a grace period; whatever of the group outlives its
leader is killed too, so nothing started by a command is left behind.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

_DRAIN_S = 1.0


@dataclass(frozen=True)
class CommandResult:
    """How a command ended. `code` is its exit status (negative: killed by that signal),
    None if it could not be started (`error` says why)."""

    code: int | None
    timed_out: bool = False
    output: bytes = b""  # the tail of stdout+stderr, at most `tail_max` bytes
    error: str | None = None
    seconds: float = 0.0
    timeout: float | None = None  # the limit it ran under

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.timed_out

    def describe(self) -> str:
        """One line for an event or a run record."""
        if self.error is not None:
            return self.error
        if self.timed_out:
            return f"timed out after {self.timeout:g}s; its process group was killed"
        if self.code is not None and self.code < 0:
            return f"killed by signal {-self.code}"
        return f"exit code {self.code}"


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pgid, sig)


async def _terminate_group(grace: float, process: trio.Process) -> None:
    # run_process calls this, shielded, when cancelled; it is cancelled itself as soon
    # as the leader exits (the rest of the group is killed after that).
    _signal_group(process.pid, signal.SIGTERM)
    await trio.sleep(grace)
    _signal_group(process.pid, signal.SIGKILL)


async def run_command(argv: Sequence[str], *, timeout: float | None = None,
                      env: Mapping[str, str] | None = None, cwd: str | None = None,
                      kill_grace: float = 2.0, sink: Callable[[bytes], None] | None = None,
                      tail_max: int = 4096) -> CommandResult:
    """Run `argv` in a new session (its own process group) to its end or `timeout`.

    stdout and stderr are one pipe: every chunk goes to `sink` (e.g. a job's log
    file) and the last `tail_max` bytes come back in the result. `env` is the whole
    environment (None: the runtime's). Never raises for the command's own failure.
    """
    started = trio.current_time()
    tail = bytearray()

    def keep(chunk: bytes) -> None:
        if sink is not None:
            sink(chunk)
        tail.extend(chunk)
        del tail[:-tail_max or None]

    process: trio.Process | None = None
    with trio.move_on_after(timeout if timeout else math.inf) as scope:
        async with trio.open_nursery() as nursery:
            try:
                process = await nursery.start(functools.partial(
                    trio.run_process, list(argv), stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
                    start_new_session=True, env=None if env is None else dict(env),
                    cwd=cwd, deliver_cancel=functools.partial(_terminate_group, kill_grace)))
            except OSError as exc:
                return CommandResult(None, error=f"cannot start {argv[0]!r}: "
                                     f"{exc.strerror or exc}",
                                     seconds=trio.current_time() - started)
            assert process.stdout is not None
            nursery.start_soon(_pump, process.stdout, keep)
            await process.wait()
            _signal_group(process.pid, signal.SIGKILL)  # what outlived its leader
            # A daemon that left the group may still hold the pipe: stop reading soon.
            nursery.cancel_scope.deadline = trio.current_time() + _DRAIN_S
    if process is not None:
        _signal_group(process.pid, signal.SIGKILL)
    return CommandResult(None if process is None else process.returncode,
                         timed_out=scope.cancelled_caught, output=bytes(tail),
                         seconds=trio.current_time() - started, timeout=timeout)


async def _pump(stream: trio.abc.ReceiveStream, keep: Callable[[bytes], None]) -> None:
    async with stream:
        while chunk := await stream.receive_some(65536):
            keep(chunk)


def command_env(extra: Mapping[str, str] | Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """The runtime's environment plus `extra` (the config's `env`, OUTPOST_* variables)."""
    env = dict(os.environ)
    env.update(dict(extra))
    return env
