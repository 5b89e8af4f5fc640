"""The data directory lock: one runtime or one offline maintenance run at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from runtime.store.errors import DataDirLockedError

LOCK_NAME = "outpost.lock"

# Locks this process holds, by path: a maintenance run holds the data dir for all
# its tasks and opens the store inside that hold (flock on a second descriptor
# of the same file would conflict with ourselves).
_held: dict[Path, list[int]] = {}  # path -> [fd, holders, pid]


class DataDirLock:
    """An exclusive flock on `<data_dir>/outpost.lock`, holding the owner's pid.

    flock is released by the kernel when the holder dies, so a kill -9 never
    leaves a stale lock. The descriptor is close-on-exec: programs the runtime
    executes do not inherit it.
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting; DataDirLockedError names the holder.

        Re-entrant within one process: a nested acquire shares the outer hold.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if key in _held and _held[key][1] > 0:
            if _held[key][2] != os.getpid():  # inherited across fork: not ours
                raise DataDirLockedError(f"data dir {self.path.parent}: lock inherited "
                                         "across fork cannot be used")
            _held[key][1] += 1
            self._fd = _held[key][0]
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLockedError(
                f"data dir {self.path.parent} is in use by another outpost process "
                f"(pid {holder}); stop it first or point this one at another data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _held[key] = [fd, 1, os.getpid()]

    def release(self) -> None:
        if self._fd is None:
            return
        key = self.path.resolve()
        hold = _held.get(key)
        self._fd = None
        if hold is not None:
            hold[1] -= 1
            if hold[1] > 0:
                return
            del _held[key]
            with contextlib.suppress(OSError):
                os.ftruncate(hold[0], 0)
            os.close(hold[0])

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
