"""Group commit: one thread owns every LMDB write transaction.

Trio tasks hand it `WriteOp`s through a queue. The thread takes every op that
is waiting (up to `max_batch`, optionally lingering `batch_window` seconds for
more), applies them all inside ONE write transaction, commits (which fsyncs in
`sync` mode), and only then hands the whole batch back to the trio thread in
one wake-up, where each op's `durable()` runs in commit order and its waiting
task is rescheduled. An op that is not in a committed transaction is never
acknowledged.

The hot op, one record appended to a stream, is data rather than code: the
writer packs its record (one msgpack Packer, in this thread, off the event
loop) and puts it under the stream's next seq in one tight loop, so a state
write costs the event loop no packing and no closure.

Failure rules:
- an op whose `apply` raises, or whose record cannot be packed (not plain
  data, over the size limit), fails alone: the transaction is aborted, sequence
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
import resource
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import lmdb
import outcome
import trio

from runtime.store import codec
from runtime.store.errors import DiskError, StoreClosedError, StoreError, StoreFullError

log = logging.getLogger("outpost.store")

_STOP = object()
_SEQ = struct.Struct(">Q")  # WAL keys: stream prefix + seq, big-endian so they sort in order

CommitHook = Callable[[int, list["WriteOp"]], None]


class WriteOp:
    """One unit of work for the writer, acknowledged once its transaction committed.

    Either `apply(txn)` runs inside a batch's transaction (its return value is
    the result), or, with `apply` None, the op appends `record` to the stream
    whose key prefix is `stream` and its result is the record's seq.
    `durable()` runs in the trio thread after the commit returned, before the
    waiting task resumes with `result`; ops of one batch complete in the order
    applied. By default it calls `on_durable(result)`; subclasses override it
    to fold the op into an in-memory view. `batch` is the number of the commit
    that carried the op (0 until it committed).
    """

    __slots__ = ("apply", "batch", "data", "error", "on_durable", "record", "result", "stream",
                 "task")

    def __init__(self, apply: Callable[[Txn], Any] | None,
                 on_durable: Callable[[Any], None] | None = None,
                 task: trio.lowlevel.Task | None = None, *, stream: bytes | None = None,
                 record: Any = None) -> None:
        self.apply = apply
        self.on_durable = on_durable
        self.result: Any = None
        self.error: BaseException | None = None
        self.task = task
        self.batch = 0
        self.stream = stream
        self.record = record
        self.data: bytes | None = None  # the packed record (writer thread)

    def durable(self) -> None:
        """Runs in the trio thread once the op is durable, before the waiter resumes."""
        if self.on_durable is not None:
            self.on_durable(self.result)


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


class Headroom:
    """Zero-filled, allocated file space kept ahead of LMDB's last page.

    LMDB grows data.mdb by writing past its end. On ext4 (and most journaling
    filesystems) an fdatasync that follows such a write must also commit the
    new size and extents to the journal: one more ordered flush inside every
    durable commit of a growing store (measured on our VM: a 50-op commit took
    ~400 us growing, ~310 us within allocated space). Writing zeros ahead, a
    chunk at a time between commits, turns LMDB's writes into overwrites of
    allocated blocks. Nothing refers to the zeros, so a crash mid-chunk is
    harmless; a failure (full disk, file size limit) only stops the headroom
    until the store has grown by another chunk, and LMDB reports its own errors.
    """

    CHUNK_MIN = 1 << 20
    CHUNK_MAX = 16 << 20

    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self._path = os.path.join(env.path(), "data.mdb")
        self._psize = env.stat()["psize"]
        try:
            self._end = os.stat(self._path).st_size
        except OSError:
            self._end = 0
        self._retry_at = 0
        self._used = self._map_size = self._chunk = 0  # as of the last due()
        self.chunks = 0  # chunks written; read by tests

    def due(self) -> bool:
        """Have LMDB's pages come within half a chunk of the zeroed space's end?"""
        info = self._env.info()
        self._used = used = (info["last_pgno"] + 1) * self._psize
        self._map_size = info["map_size"]
        chunk = self._chunk = min(self.CHUNK_MAX, max(self.CHUNK_MIN, self._end // 8))
        return used + chunk // 2 > self._end and used >= self._retry_at

    def extend(self) -> None:
        """Write the next chunk of zeros (after due() said so; no transaction open)."""
        used, chunk = self._used, self._chunk
        start = max(used, self._end)
        end = min(self._map_size, start + chunk)
        if end <= start:
            return
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                zeros = bytes(min(end - start, 256 << 10))
                at = start
                while at < end:
                    at += os.pwrite(fd, zeros[:end - at], at)
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.info("store headroom not extended (%s); writes go on without it", exc)
            self._retry_at = used + chunk
            return
        self._end = end
        self.chunks += 1


class GroupCommitWriter:
    """The writer thread. Create, `start(token)`, `submit(op)` from trio, `stop()` at the end.

    `before_commit(batch_no, ops)` and `after_commit(batch_no, ops)` are optional
    hooks called in the writer thread just before `commit()` and just after it
    returned; tests use them to prove acks never precede commits.
    """

    def __init__(self, env: lmdb.Environment, seqs: dict[bytes, int], *, sync: bool,
                 fsync_interval: float, batch_window: float, max_batch: int,
                 map_size_max: int, append_db: Any = None,
                 max_record_bytes: int = codec.MAX_RECORD_BYTES,
                 gate: ResizeGate | None = None) -> None:
        self._env = env
        self._append_db = append_db  # where appends go: stream NUL seq(>Q) -> record
        self._max_record = max_record_bytes
        self._path = env.path()
        self._seqs = dict(seqs)  # working counters, rolled back with failed batches
        self.committed = dict(seqs)  # newest committed seq per stream; read by any thread
        self._sync = sync
        self._fsync_interval = fsync_interval
        self._batch_window = batch_window
        self._max_batch = max_batch
        self._map_size_max = map_size_max
        self._gate = gate or ResizeGate()
        # Submitted ops wait in one list that the writer takes whole (not op by op).
        # _lock guards it with _closed, _sleeping and _special; _wake is held while the
        # writer is not sleeping and released by the submit that ends its sleep, so a
        # burst of submits wakes the thread once.
        self._pending: list = []
        self._special = 0  # stop markers and exclusive ops in _pending
        self._sleeping = False
        self._wake = threading.Lock()
        self._wake.acquire()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._dead: StoreError | None = None
        self._inflight: list[WriteOp] | None = None
        self.commits = 0  # write transactions committed; read by tests and benchmarks
        self.fsyncs = 0  # explicit fsyncs in interval mode
        self.before_commit: CommitHook | None = None
        self.after_commit: CommitHook | None = None
        self._headroom = Headroom(env)

    def start(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._thread = threading.Thread(target=self._run, name="outpost-store-writer",
                                        daemon=True)
        self._thread.start()

    def submit(self, op: WriteOp) -> None:
        """Queue `op`; StoreClosedError if the store is closing (the op is not accepted)."""
        # Under the lock, "not closed" and "queued before the stop marker" are one
        # step, so no op can land behind the marker and wait forever.
        with self._lock:
            if self._dead is not None:
                raise self._dead
            if self._closed:
                raise StoreClosedError("the store is closed; the write was not accepted")
            self._pending.append(op)
            if isinstance(op, ExclusiveOp):
                self._special += 1
            if self._sleeping:
                self._sleeping = False
                self._wake.release()

    def queued(self) -> int:
        """Ops submitted and not yet taken by the writer (for tests and diagnostics)."""
        return len(self._pending)

    def stop(self) -> None:
        """Commit everything already submitted, fsync, and end the thread."""
        with self._lock:
            if self._closed:
                already = True
            else:
                already = False
                self._closed = True
                self._pending.append(_STOP)
                self._special += 1
                if self._sleeping:
                    self._sleeping = False
                    self._wake.release()
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
            batch = self._take(timeout)
            if batch is None:  # the interval passed with nothing to write
                last_sync, dirty = self._fsync(), False
                continue
            first = batch[0]
            if first is _STOP:
                break
            if isinstance(first, ExclusiveOp):
                if dirty:
                    last_sync, dirty = self._fsync(), False
                self._run_exclusive(first)
                continue
            self._inflight = batch
            if self._batch_window > 0:
                self._linger(batch)
            if self._commit(batch) and not self._sync:
                dirty = True
                if time.monotonic() - last_sync >= self._fsync_interval:
                    last_sync, dirty = self._fsync(), False
            self._inflight = None
            # Bookkeeping before the wake-up, so the thread is asleep (the GIL free) by
            # the time the event loop runs the acks; writing headroom after it, so
            # that delays only the next commit.
            extend = self._headroom.due()
            self._token.run_sync_soon(_complete, batch)
            if extend:
                self._headroom.extend()
        if dirty:
            self._fsync()

    def _take(self, timeout: float | None, limit: int | None = None) -> list | None:
        """The next batch: every waiting op up to `limit` (max_batch), stopping before a
        stop marker or exclusive op, which come alone. Sleeps until an op arrives or
        `timeout` passes (then None)."""
        limit = limit or self._max_batch
        while True:
            with self._lock:
                pending = self._pending
                if pending:
                    if self._special:
                        limit = self._special_cut(pending, limit)
                    if len(pending) <= limit:
                        self._pending = []
                        return pending
                    batch = pending[:limit]
                    del pending[:limit]
                    return batch
                self._sleeping = True
            if self._wake.acquire(timeout=-1 if timeout is None else timeout):
                continue
            with self._lock:
                if self._sleeping:  # a real timeout
                    self._sleeping = False
                    return None
            self._wake.acquire()  # a submit released it just as we timed out: consume it

    def _special_cut(self, pending: list, limit: int) -> int:
        """How many of `pending` the next batch may take, given a stop marker or
        exclusive op among them: everything before it, or it alone. (Under _lock.)"""
        for i, op in enumerate(pending[:limit]):
            if op is _STOP or isinstance(op, ExclusiveOp):
                if i == 0:
                    self._special -= 1
                    return 1
                return i
        return limit

    def _linger(self, batch: list) -> None:
        """batch_window > 0: wait up to the window for more ops to join `batch`."""
        deadline = time.monotonic() + self._batch_window
        while len(batch) < self._max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with self._lock:
                if self._pending and (self._pending[0] is _STOP
                                      or isinstance(self._pending[0], ExclusiveOp)):
                    return  # it runs alone, after this batch
            more = self._take(left, self._max_batch - len(batch))
            if more is None:
                return
            if more[0] is _STOP or isinstance(more[0], ExclusiveOp):
                with self._lock:  # not ours: back to the front, still counted as special
                    self._pending[:0] = more
                    self._special += 1
                return
            batch.extend(more)

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

    def rebind(self, env: lmdb.Environment, append_db: Any = None) -> None:
        """Use a reopened environment (an exclusive op swapped the file)."""
        self._env = env
        self._append_db = append_db
        self._headroom = Headroom(env)

    def _fsync(self) -> float:
        try:
            self._env.sync(True)
            self.fsyncs += 1
        except lmdb.Error as exc:
            log.error("store fsync failed: %s", exc)
        return time.monotonic()

    def _commit(self, batch: list[WriteOp]) -> bool:
        """Apply and commit `batch`; True if a transaction with its live ops committed."""
        pack_seq, db = _SEQ.pack, self._append_db
        pack, limit = codec.packer().pack, self._max_record
        one_by_one = False  # after a bulk put came up short: find the op that failed
        while True:
            live = [op for op in batch if op.error is None]
            if not live:
                return False
            txn = self._env.begin(write=True)
            tx = Txn(txn, self._seqs)
            seqs, undo, put = tx._seqs, tx._undo, txn.put
            items: list[tuple[bytes, bytes]] = []  # appends not yet put, in order
            failed_op = None
            try:
                for op in live:
                    failed_op = op
                    stream = op.stream
                    if stream is None:
                        if items:  # the op may read what the appends before it wrote
                            self._put_all(txn, items)
                        op.result = op.apply(tx)
                        continue
                    # The append, inlined: it is most of every batch.
                    data = op.data
                    if data is None:
                        try:
                            data = pack(op.record)
                        except Exception:
                            data = b""
                        if not data or len(data) > limit:
                            # The slow path raises a StoreError that says what is wrong,
                            # and the op fails alone (the batch is retried without it).
                            data = codec.pack(op.record, limit)
                        op.data = data
                    seq = seqs.get(stream, 0) + 1
                    if stream not in undo:
                        undo[stream] = seq - 1
                    seqs[stream] = seq
                    op.result = seq
                    if one_by_one:
                        if not put(stream + pack_seq(seq), data, db=db, overwrite=False):
                            raise seq_taken(stream, seq)
                    else:
                        items.append((stream + pack_seq(seq), data))
                failed_op = None
                if items:
                    self._put_all(txn, items)
                if self.before_commit is not None:
                    self.before_commit(self.commits + 1, live)
                txn.commit()
            except _ShortPut:
                _abort(txn, tx)
                one_by_one = True
                continue
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

    def _put_all(self, txn: lmdb.Transaction, items: list[tuple[bytes, bytes]]) -> None:
        """Put pending appends in one call (and clear them); _ShortPut if a key existed."""
        # Not append=True: MDB_APPEND compares with the last key of the whole database
        # (another stream's), and py-lmdb then refuses silently instead of raising.
        added = txn.cursor(db=self._append_db).putmulti(items, overwrite=False)[1]
        if added != len(items):
            raise _ShortPut
        items.clear()

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
        with self._lock:
            self._closed = True
            queued, self._pending = self._pending, []
        error = self._dead or StoreClosedError("the store closed before this write was committed")
        leftovers = []
        for op in self._inflight or ():
            if op.batch == 0:  # not committed: it must not look acknowledged
                op.error = error
            leftovers.append(op)
        self._inflight = None
        for op in queued:
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


class _ShortPut(Exception):
    """A bulk put stored fewer records than given: redo the batch op by op to name it."""


def seq_taken(stream: bytes, seq: int) -> StoreError:
    """The error for a record whose seq is already stored under `stream` (a key prefix)."""
    # Counters come from the newest key at open and move only in the writer, so
    # this means the database changed under the store: refuse rather than overwrite.
    name = stream[:-1].decode("utf-8", "replace")
    return StoreError(f"stream {name!r}: seq {seq} is already stored; the data dir was "
                      "changed by something other than this store")


def _complete(batch: list[WriteOp]) -> None:
    """Runs in the trio thread: acknowledge a committed (or failed) batch, in order."""
    reschedule = trio.lowlevel.reschedule
    value, error = outcome.Value, outcome.Error
    for op in batch:
        if op.error is None:
            try:
                op.durable()
            except Exception:
                log.exception("on_durable callback failed")
            if op.task is not None:
                reschedule(op.task, value(op.result))
        elif op.task is not None:
            reschedule(op.task, error(op.error))
