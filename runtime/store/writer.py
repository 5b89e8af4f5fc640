"""Group commit: one thread owns every LMDB write transaction.

Trio tasks hand it `WriteOp`s through a queue. The thread takes every op that
is waiting (up to `max_batch`, optionally lingering `batch_window` seconds for
more), applies them all inside ONE write transaction, commits (which fsyncs in
`sync` mode), and only then hands the whole batch back to the trio thread, where
each op's `on_durable` runs in commit order and its waiter wakes. An op that is
not in a committed transaction is never acknowledged.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import lmdb
import trio

from runtime.store.errors import DiskError, StoreClosedError, StoreError, StoreFullError

log = logging.getLogger("outpost.store")

_STOP = object()


class WriteOp:
    """One unit of work for the writer: `apply(txn)` runs inside a batch's transaction.

    `on_durable(result)` runs in the trio thread after the commit returned,
    before the waiter wakes; ops of one batch complete in the order applied.
    """

    __slots__ = ("apply", "done", "error", "on_durable", "result")

    def __init__(self, apply: Callable[[Txn], Any],
                 on_durable: Callable[[Any], None] | None = None) -> None:
        self.apply = apply
        self.on_durable = on_durable
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Txn:
    """What an op sees inside the batch: the LMDB txn and per-stream sequence counters.

    Counter changes are rolled back if the batch does not commit, so sequence
    numbers stay gap-free.
    """

    def __init__(self, txn: lmdb.Transaction, seqs: dict[bytes, int]) -> None:
        self.txn = txn
        self._seqs = seqs
        self._undo: dict[bytes, int] = {}

    def next_seq(self, stream: bytes) -> int:
        last = self._seqs.get(stream, 0)
        self._undo.setdefault(stream, last)
        self._seqs[stream] = last + 1
        return last + 1

    def rollback(self) -> None:
        self._seqs.update(self._undo)
        self._undo.clear()


class GroupCommitWriter:
    """The writer thread. Create, `start(token)`, `submit(op)` from trio, `stop()` at the end."""

    def __init__(self, env: lmdb.Environment, seqs: dict[bytes, int], *, sync: bool,
                 fsync_interval: float, batch_window: float, max_batch: int,
                 map_size_max: int) -> None:
        self._env = env
        self._seqs = seqs
        self._sync = sync
        self._fsync_interval = fsync_interval
        self._batch_window = batch_window
        self._max_batch = max_batch
        self._map_size_max = map_size_max
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._closed = False
        self.commits = 0  # batches committed; read by tests and benchmarks

    def start(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._thread = threading.Thread(target=self._run, name="outpost-store-writer",
                                        daemon=True)
        self._thread.start()

    def submit(self, op: WriteOp) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed; the write was not accepted")
        self._queue.put(op)

    def stop(self) -> None:
        """Commit everything already submitted, fsync, and end the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join()

    # -- the thread --------------------------------------------------------------

    def _run(self) -> None:
        last_sync = time.monotonic()
        stopping = False
        while not stopping:
            timeout = None
            if not self._sync:
                timeout = max(0.0, self._fsync_interval - (time.monotonic() - last_sync))
            try:
                first = self._queue.get(timeout=timeout)
            except queue.Empty:
                last_sync = self._fsync(last_sync)
                continue
            if first is _STOP:
                break
            batch = [first]
            stopping = self._fill(batch)
            self._commit(batch)
            self.commits += 1
            if not self._sync and time.monotonic() - last_sync >= self._fsync_interval:
                last_sync = self._fsync(last_sync)
            self._token.run_sync_soon(_complete, batch)
        self._fsync(last_sync)

    def _fill(self, batch: list) -> bool:
        """Add waiting ops to `batch`; True if the stop marker was met."""
        deadline = time.monotonic() + self._batch_window
        while len(batch) < self._max_batch:
            try:
                if self._batch_window > 0:
                    op = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    op = self._queue.get_nowait()
            except queue.Empty:
                return False
            if op is _STOP:
                return True
            batch.append(op)
        return False

    def _fsync(self, last_sync: float) -> float:
        if not self._sync:
            try:
                self._env.sync(True)
            except lmdb.Error as exc:
                log.error("store fsync failed: %s", exc)
        return time.monotonic()

    def _commit(self, batch: list[WriteOp]) -> None:
        while True:
            tx = None
            try:
                with self._env.begin(write=True) as txn:
                    tx = Txn(txn, self._seqs)
                    for op in batch:
                        op.result = op.apply(tx)
                return
            except lmdb.MapFullError:
                if tx is not None:
                    tx.rollback()
                if not self._grow():
                    _fail(batch, StoreFullError(
                        f"store is full at its cap of {self._map_size_max} bytes; "
                        "raise [store] map_size_max or prune old data"))
                    return
            except lmdb.Error as exc:
                if tx is not None:
                    tx.rollback()
                _fail(batch, _disk_error(exc))
                return
            except Exception as exc:
                if tx is not None:
                    tx.rollback()
                log.exception("store write op failed; its batch was not committed")
                _fail(batch, StoreError(f"write failed and was not committed: {exc!r}"))
                return

    def _grow(self) -> bool:
        """Double the map (outside any write transaction) up to the cap."""
        current = self._env.info()["map_size"]
        if current >= self._map_size_max:
            return False
        new = min(self._map_size_max, current * 2)
        log.info("store map full at %d bytes: growing to %d", current, new)
        self._env.set_mapsize(new)
        return True


def _disk_error(exc: lmdb.Error) -> StoreError:
    text = str(exc)
    if "No space" in text or "ENOSPC" in text or getattr(exc, "errno", None) == errno.ENOSPC:
        return DiskError(f"disk full: nothing in this batch was stored ({text}); "
                         "free space and writes resume")
    if "File too large" in text or getattr(exc, "errno", None) == errno.EFBIG:
        return DiskError(f"file size limit reached: nothing in this batch was stored ({text})")
    return DiskError(f"the store could not write: nothing in this batch was stored ({text})")


def _fail(batch: list[WriteOp], error: StoreError) -> None:
    for op in batch:
        op.error = error
        op.result = None


def _complete(batch: list[WriteOp]) -> None:
    """Runs in the trio thread: acknowledge a committed (or failed) batch, in order."""
    for op in batch:
        if op.error is None and op.on_durable is not None:
            try:
                op.on_durable(op.result)
            except Exception:
                log.exception("on_durable callback failed")
        op.done.set()
