"""Running maintenance: through a live runtime if one answers, else offline under the lock.

Exit codes (documented for cron, defined in runtime.exitcodes): 0 every task
ok; 1 a task found or hit a problem; 2 usage or config error; 75 (EX_TEMPFAIL)
the data dir is locked by another maintenance run or a starting runtime — we
never wait, so cron jobs cannot stack up.

Asking a runtime costs only the control client: trio, the store and the task
functions are imported by `run_offline`, the one path that needs them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.control.client import ControlClient, NotRunningError
from runtime.maintain.catalog import ALL_TASKS, OFFLINE_ONLY, ROUTINE, TAKES_ARG
from runtime.maintain.progress import Progress, reporting
from runtime.maintain.report import MaintainError, TaskResult

if TYPE_CHECKING:
    from runtime.config import Config


def parse_tasks(words: list[str]) -> list[tuple[str, str | None]]:
    """['checkpoint', 'backup', '/b'] -> [('checkpoint', None), ('backup', '/b')]."""
    if not words:
        return [(name, None) for name in ROUTINE]
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(words):
        name = words[i]
        if name not in ALL_TASKS:
            raise MaintainError(f"unknown maintenance task {name!r}; tasks: "
                                + ", ".join(ALL_TASKS))
        arg = None
        if name in TAKES_ARG:
            if i + 1 >= len(words):
                raise MaintainError(f"{name} needs a folder: outpost maintain {name} DIR")
            arg = words[i + 1]
            i += 1
        out.append((name, arg))
        i += 1
    return out


def run_online(config: Config, tasks: list[tuple[str, str | None]],
               progress: Progress | None = None) -> list[dict] | None:
    """Ask the running runtime to do the tasks; None if no runtime answers.

    The runtime reports no progress while it works, so `progress` gets the elapsed
    time (done = seconds, total = 0) to show the task is alive.
    """
    try:
        client = ControlClient(config.socket_path, timeout=3600)
    except NotRunningError:
        return None
    with client:
        for name, _ in tasks:
            if name in OFFLINE_ONLY:
                raise MaintainError(f"{name} is offline only and a runtime is running "
                                    f"(pid {client.call('info')['pid']}): stop it first "
                                    "with `outpost stop`")
        results = []
        for name, arg in tasks:
            # A relative backup folder means relative to where the command was typed.
            args = {"arg": str(Path(arg).absolute())} if arg else {}
            with _ticking(progress, f"{name} (in the runtime)"):
                results.append(client.call("maintain", task=name, args=args)["result"])
        return results


def run_offline(config: Config, tasks: list[tuple[str, str | None]],
                progress: Progress | None = None) -> list[TaskResult]:
    """Do the tasks with no runtime, under the data-dir lock (see runtime.maintain.offline).

    Raises DataDirLockedError (runtime.store.errors) at once if the lock is held.
    """
    from runtime.maintain.offline import run_tasks

    return run_tasks(config, tasks, progress)


@contextlib.contextmanager
def _ticking(progress: Progress | None, label: str) -> Iterator[None]:
    if progress is None:
        yield
        return
    started = time.monotonic()
    with reporting(lambda: progress(int(time.monotonic() - started), 0, label), 0.25):
        yield
