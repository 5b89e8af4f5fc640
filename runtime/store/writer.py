"""Group commit: one thread owns every LMDB write transaction.

Trio tasks hand it `WriteOp`s through a queue. The thread takes every op that
is waiting (up to `max_batch`, optionally lingering `batch_window` seconds for
more), applies them all inside ONE write transaction, commits (which fsyncs in
`sync` mode), and only then hands the whole batch back to the trio thread, where
each op's `on_durable` runs in commit order and its waiting task is rescheduled.
An op that is not in a committed transaction is never acknowledged.

Failure rules:
- an op whose `apply` raises fails alone: the transaction is aborted, sequence
  counters roll back, and the rest of the batch is retried without it;
- MapFullError grows the map (outside any transaction, with reads held off)
  and retries, up to the cap; past it the batch gets StoreFullError;
- any other LMDB error (full disk, file size limit, I/O error) fails the whole
  batch with DiskError; the next batch tries again, so writing resumes by itself
  when space returns.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import resource
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import lmdb
import outcome
import trio

from runtime.store.errors import DiskError, StoreClosedError, StoreError, StoreFullError

log = logging.getLogger("outpost.store")

_STOP = object()

CommitHook = Callable[[int, list["WriteOp"]], None]


class WriteOp:
    """One unit of work for the writer: `apply(txn)` runs inside a batch's transaction.

    `on_durable(result)` runs in the trio thread after the commit returned,
    before the waiting task resumes; ops of one batch complete in the order
    applied. `batch` is the number of the commit that carried the op (0 until
    it committed).
    """

    __slots__ = ("apply", "batch", "error", "on_durable", "result", "task")

    def __init__(self, apply: Callable[[Txn], Any],
                 on_durable: Callable[[Any], None] | None = None,
                 task: trio.lowlevel.Task | None = None) -> None:
        self.apply = apply
        self.on_durable = on_durable
        self.result: Any = None
        self.error: BaseException | None = None
        self.task = task
        self.batch = 0


class ExclusiveOp(WriteOp):
    """Work that needs the environment to itself: `apply(writer)` runs in the writer
    thread, alone, with no transaction open. Ops submitted after it wait (queued,
    not lost) until it is done. Used for online compaction."""

    __slots__ = ()


class Txn:
    """What an op sees inside the batch: the LMDB txn and per-stream sequence counters.

    Counter changes are rolled back if the batch does not commit, so sequence
    numbers stay gap-free.
    """

    __slots__ = ("_seqs", "_undo", "txn")

    def __init__(self, txn: lmdb.Transaction, seqs: dict[bytes, int]) -> None:
        self.txn = txn
        self._seqs = seqs
        self._undo: dict[bytes, int] = {}

    def last_seq(self, stream: bytes) -> int:
        """The newest sequence number of `stream` including this batch so far."""
        return self._seqs.get(stream, 0)

    def next_seq(self, stream: bytes) -> int:
        last = self._seqs.get(stream, 0)
        if stream not in self._undo:
            self._undo[stream] = last
        self._seqs[stream] = last + 1
        return last + 1

    def take_seqs(self, stream: bytes, count: int) -> int:
        """Reserve `count` consecutive seqs; returns the first."""
        last = self._seqs.get(stream, 0)
        if stream not in self._undo:
            self._undo[stream] = last
        self._seqs[stream] = last + count
        return last + 1

    def touched(self) -> Iterable[bytes]:
        """Streams whose counters this batch moved."""
        return self._undo.keys()

    def rollback(self) -> None:
        self._seqs.update(self._undo)
        self._undo.clear()


class ResizeGate:
    """Readers share it; a map resize takes it alone.

    LMDB's set_mapsize replaces the memory map, so no read transaction of this
    process may be open while it runs (a reader would touch unmapped memory).
    Reads are short, and resizes rare, so a condition variable is enough.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def resizing(self) -> Iterator[None]:
        with self._cond:
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class GroupCommitWriter:
    """The writer thread. Create, `start(token)`, `submit(op)` from trio, `stop()` at the end.

    `before_commit(batch_no, ops)` and `after_commit(batch_no, ops)` are optional
    hooks called in the writer thread just before `commit()` and just after it
    returned; tests use them to prove acks never precede commits.
    """

    def __init__(self, env: lmdb.Environment, seqs: dict[bytes, int], *, sync: bool,
                 fsync_interval: float, batch_window: float, max_batch: int,
                 map_size_max: int, gate: ResizeGate | None = None) -> None:
        self._env = env
        self._path = env.path()
        self._seqs = dict(seqs)  # working counters, rolled back with failed batches
        self.committed = dict(seqs)  # newest committed seq per stream; read by any thread
        self._sync = sync
        self._fsync_interval = fsync_interval
        self._batch_window = batch_window
        self._max_batch = max_batch
        self._map_size_max = map_size_max
        self._gate = gate or ResizeGate()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._submit_lock = threading.Lock()
        self._closed = False
        self._dead: StoreError | None = None
        self._inflight: list[WriteOp] | None = None
        self._carry: WriteOp | None = None  # an exclusive op met while filling a batch
        self.commits = 0  # write transactions committed; read by tests and benchmarks
        self.fsyncs = 0  # explicit fsyncs in interval mode
        self.before_commit: CommitHook | None = None
        self.after_commit: CommitHook | None = None

    def start(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._thread = threading.Thread(target=self._run, name="outpost-store-writer",
                                        daemon=True)
        self._thread.start()

    def submit(self, op: WriteOp) -> None:
        """Queue `op`; StoreClosedError if the store is closing (the op is not accepted)."""
        # The lock makes "not closed" and "queued before the stop marker" one step,
        # so no op can land behind the marker and wait forever.
        with self._submit_lock:
            if self._dead is not None:
                raise self._dead
            if self._closed:
                raise StoreClosedError("the store is closed; the write was not accepted")
            self._queue.put(op)

    def stop(self) -> None:
        """Commit everything already submitted, fsync, and end the thread."""
        with self._submit_lock:
            if self._closed:
                already = True
            else:
                already = False
                self._closed = True
                self._queue.put(_STOP)
        if not already and self._thread is not None:
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            log.critical("store writer thread crashed: %r; writes now fail until restart", exc)
            self._dead = StoreError(f"the store writer stopped after an internal error ({exc!r}); "
                                    "nothing further can be written: restart the runtime")
            raise
        finally:
            self._fail_leftovers()

    def _loop(self) -> None:
        last_sync = time.monotonic()
        dirty = False  # interval mode: commits not yet fsynced
        while True:
            timeout = None
            if dirty:
                timeout = max(0.0, self._fsync_interval - (time.monotonic() - last_sync))
            if self._carry is not None:
                first, self._carry = self._carry, None
            else:
                try:
                    first = self._queue.get(timeout=timeout)
                except queue.Empty:
                    last_sync, dirty = self._fsync(), False
                    continue
            if first is _STOP:
                break
            if isinstance(first, ExclusiveOp):
                if dirty:
                    last_sync, dirty = self._fsync(), False
                self._run_exclusive(first)
                continue
            batch = self._inflight = [first]
            stopping = self._fill(batch)
            if self._commit(batch) and not self._sync:
                dirty = True
                if time.monotonic() - last_sync >= self._fsync_interval:
                    last_sync, dirty = self._fsync(), False
            self._token.run_sync_soon(_complete, batch)
            self._inflight = None
            if stopping:
                break
        if dirty:
            self._fsync()

    def _fill(self, batch: list) -> bool:
        """Add waiting ops to `batch`; True if the stop marker was met."""
        get = self._queue.get_nowait
        if self._batch_window > 0:
            deadline = time.monotonic() + self._batch_window
        while len(batch) < self._max_batch:
            try:
                if self._batch_window > 0:
                    op = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    op = get()
            except queue.Empty:
                return False
            if op is _STOP:
                return True
            if isinstance(op, ExclusiveOp):  # it runs alone, after this batch
                self._carry = op
                return False
            batch.append(op)
        return False

    def _run_exclusive(self, op: ExclusiveOp) -> None:
        self._inflight = [op]
        try:
            op.result = op.apply(self)
        except StoreError as exc:
            op.error = exc
        except Exception as exc:
            log.exception("exclusive store operation failed")
            op.error = StoreError(f"store operation failed: {exc!r}")
        self._inflight = None
        op.batch = -1  # done (not a commit; nothing of it can look unacknowledged)
        self._token.run_sync_soon(_complete, [op])

    def rebind(self, env: lmdb.Environment) -> None:
        """Use a reopened environment (an exclusive op swapped the file)."""
        self._env = env

    def _fsync(self) -> float:
        try:
            self._env.sync(True)
            self.fsyncs += 1
        except lmdb.Error as exc:
            log.error("store fsync failed: %s", exc)
        return time.monotonic()

    def _commit(self, batch: list[WriteOp]) -> bool:
        """Apply and commit `batch`; True if a transaction with its live ops committed."""
        while True:
            live = [op for op in batch if op.error is None]
            if not live:
                return False
            txn = self._env.begin(write=True)
            tx = Txn(txn, self._seqs)
            failed_op = None
            try:
                for op in live:
                    failed_op = op
                    op.result = op.apply(tx)
                failed_op = None
                if self.before_commit is not None:
                    self.before_commit(self.commits + 1, live)
                txn.commit()
            except lmdb.MapFullError:
                _abort(txn, tx)
                if not self._grow():
                    _fail(live, StoreFullError(
                        f"store is full at its cap of {self._map_size_max} bytes; nothing in "
                        "this batch was stored: raise [store] map_size_max or prune old data"))
                    return False
                continue
            except lmdb.Error as exc:
                _abort(txn, tx)
                _fail(live, _lmdb_error(exc, self._path))
                return False
            except StoreError as exc:  # an op refused its input: it alone fails
                _abort(txn, tx)
                _fail([failed_op or live[-1]], exc)
                continue
            except Exception as exc:
                _abort(txn, tx)
                log.exception("store write op failed; it was dropped from its batch")
                _fail([failed_op or live[-1]],
                      StoreError(f"write failed and was not committed: {exc!r}"))
                continue
            for stream in tx.touched():
                self.committed[stream] = self._seqs[stream]
            self.commits += 1
            for op in live:
                op.batch = self.commits
            if self.after_commit is not None:
                self.after_commit(self.commits, live)
            return True

    def _grow(self) -> bool:
        """Double the map (outside any write transaction) up to the cap."""
        current = self._env.info()["map_size"]
        if current >= self._map_size_max:
            return False
        new = min(self._map_size_max, current * 2)
        log.warning("store map full at %d bytes: growing to %d (cap %d)",
                    current, new, self._map_size_max)
        with self._gate.resizing():
            self._env.set_mapsize(new)
        return True

    def _fail_leftovers(self) -> None:
        """Fail every op still queued (after a stop or a crash) so no waiter hangs."""
        with self._submit_lock:
            self._closed = True
        error = self._dead or StoreClosedError("the store closed before this write was committed")
        leftovers = []
        for op in self._inflight or ():
            if op.batch == 0:  # not committed: it must not look acknowledged
                op.error = error
            leftovers.append(op)
        self._inflight = None
        if self._carry is not None:  # an exclusive op taken off the queue, not yet run
            self._carry.error = error
            leftovers.append(self._carry)
            self._carry = None
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op is not _STOP:
                op.error = error
                leftovers.append(op)
        if leftovers and self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(_complete, leftovers)


def _abort(txn: lmdb.Transaction, tx: Txn) -> None:
    tx.rollback()
    with contextlib.suppress(lmdb.Error):
        txn.abort()


def _lmdb_error(exc: lmdb.Error, path: str) -> StoreError:
    """A clear error for a failed batch; `code` is the errno for OS-level failures.

    LMDB reports a short write as EIO (a full disk often fails that way: the
    first pages fit, the rest do not), so an EIO is diagnosed by looking at the
    free space and the file size limit.
    """
    code = getattr(exc, "code", 0)
    text = str(exc)
    free = _free_bytes(path)
    where = f"{free} bytes free on the data_dir filesystem" if free is not None else ""
    if code == errno.ENOSPC or "No space" in text or \
            (code == errno.EIO and free is not None and free < _NEARLY_FULL):
        return DiskError(f"disk full: nothing in this batch was stored ({text}; {where}); "
                         "free space on the data_dir filesystem and writes resume")
    if code == errno.EFBIG or "File too large" in text or \
            (code == errno.EIO and _near_fsize_limit(path)):
        return DiskError(f"file size limit reached: nothing in this batch was stored ({text}); "
                         "raise the limit (ulimit -f / RLIMIT_FSIZE) and writes resume")
    if isinstance(exc, lmdb.PanicError):
        return DiskError(f"LMDB reported a fatal error ({text}); nothing in this batch was "
                         "stored and the environment must be reopened: restart the runtime")
    return DiskError(f"the store could not write: nothing in this batch was stored ({text}"
                     f"{'; ' + where if where else ''}); check the disk and the kernel log")


_NEARLY_FULL = 8 << 20


def _free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _near_fsize_limit(path: str) -> bool:
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft == resource.RLIM_INFINITY:
        return False
    try:
        size = os.stat(os.path.join(path, "data.mdb")).st_size
    except OSError:
        return False
    return size + _NEARLY_FULL >= soft


def _fail(ops: list[WriteOp], error: StoreError) -> None:
    for op in ops:
        op.error = error
        op.result = None


def _complete(batch: list[WriteOp]) -> None:
    """Runs in the trio thread: acknowledge a committed (or failed) batch, in order."""
    reschedule = trio.lowlevel.reschedule
    value = outcome.Value
    for op in batch:
        if op.error is None:
            if op.on_durable is not None:
                try:
                    op.on_durable(op.result)
                except Exception:
                    log.exception("on_durable callback failed")
            if op.task is not None:
                reschedule(op.task, value(op.result))
        elif op.task is not None:
            reschedule(op.task, outcome.Error(op.error))
