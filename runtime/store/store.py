"""The durable store: named streams of msgpack records (the WAL) and their checkpoints.

It knows nothing about agents. A stream is a name; a record is plain data; a
checkpoint is opaque bytes that cover a stream up to a sequence number. All
writes go through the group-commit writer; reads are direct LMDB read
transactions.

LMDB layout (named databases in one environment, so a checkpoint and the pruning
of the WAL it covers commit atomically):

    wal             stream NUL seq(>Q)  -> msgpack record
    checkpoints     stream NUL seq(>Q)  -> checkpoint blob (see codec)
    quarantine      stream NUL seq(>Q)  -> a checkpoint that failed verification, as found
    quarantine_why  stream NUL seq(>Q)  -> utf-8: when and why it was quarantined

Checkpoint retention (why the WAL outlives the newest checkpoint): a stream keeps
its `keep_checkpoints` newest checkpoints (default 2) and the WAL after the OLDEST
of them. So if the newest checkpoint fails verification at recovery, the previous
one plus a longer replay still rebuilds the exact state. Until a stream has
`keep_checkpoints` checkpoints nothing is pruned (the fallback is a replay from
seq 1). With `keep_checkpoints = 1` a bad checkpoint cannot be recovered from and
loading fails loudly instead of returning partial state.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import shutil
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import trio

from runtime.store import codec
from runtime.store.errors import CorruptCheckpointError, DiskError, StoreError
from runtime.store.lock import DataDirLock
from runtime.store.writer import (
    CommitHook,
    ExclusiveOp,
    GroupCommitWriter,
    ResizeGate,
    Txn,
    WriteOp,
    seq_taken,
)

log = logging.getLogger("outpost.store")

_SEQ = struct.Struct(">Q")
_MAX_STREAM = 200
DURABILITY_MODES = ("sync", "interval")


@dataclass(frozen=True)
class StoreOptions:
    """How the store opens and commits. Defaults suit a small edge host.

    durability:
      "sync" (default): a write is acknowledged only after the LMDB commit that
        carries it returned, and that commit fsynced data and meta page.
      "interval": acknowledged as soon as its commit returned (in the OS page
        cache); the writer fsyncs at least every `fsync_interval_ms` while there
        is unsynced data. A process crash (kill -9) loses nothing; a power loss
        or kernel crash can lose the writes acknowledged in the last
        `fsync_interval_ms` (plus the fsync's own duration). LMDB keeps the file
        consistent then only if the filesystem preserves write order (its
        MDB_NOSYNC caveat), so use "sync" where a power cut is likely.
    batch_window_ms: how long the writer lingers for more ops once one arrived
      (0 = commit what is waiting as soon as the previous commit returned).
    max_batch: most ops in one write transaction.
    keep_checkpoints: checkpoints kept per stream; the WAL after the oldest of
      them is kept so a bad newest checkpoint can be recovered from (>= 2 for that).
    """

    map_size: int = 64 << 20
    map_size_max: int = 1 << 30
    durability: str = "sync"
    fsync_interval_ms: int = 100
    batch_window_ms: float = 0.0
    max_batch: int = 4096
    zstd_level: int = 3
    max_record_bytes: int = codec.MAX_RECORD_BYTES
    keep_checkpoints: int = 2

    @classmethod
    def of(cls, settings: Any) -> StoreOptions:
        """The options `settings` names, by attribute (e.g. the config's [store] section:
        its other keys, like the checkpoint ones, are not the store's); the rest default."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)
                      if hasattr(settings, f.name)})

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise StoreError(f"store option {key} = {getattr(self, key)!r}: {what}")
        need(self.durability in DURABILITY_MODES, "durability",
             f"must be one of {', '.join(DURABILITY_MODES)}")
        need(self.map_size >= 1 << 16, "map_size", "must be at least 64 KiB")
        need(self.map_size_max >= self.map_size, "map_size_max", "must be >= map_size")
        need(1 <= self.fsync_interval_ms <= 60_000, "fsync_interval_ms", "must be 1..60000")
        need(0 <= self.batch_window_ms <= 100, "batch_window_ms", "must be 0..100 (ms)")
        need(self.max_batch >= 1, "max_batch", "must be >= 1")
        need(1 <= self.zstd_level <= 22, "zstd_level", "must be 1..22")
        need(1 <= self.max_record_bytes <= codec.MAX_RECORD_BYTES, "max_record_bytes",
             f"must be 1..{codec.MAX_RECORD_BYTES}")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1 (2 allows fallback)")


def stream_key(stream: str) -> bytes:
    """The key prefix of `stream` (its UTF-8 name + NUL); StoreError for a bad name."""
    if type(stream) is not str:
        raise StoreError(f"stream name must be a string, got {type(stream).__name__}")
    return _stream_key_of(stream)


@functools.lru_cache(maxsize=4096)
def _stream_key_of(stream: str) -> bytes:
    try:
        raw = stream.encode("utf-8")
    except UnicodeEncodeError:
        raw = b""
    if not raw or len(raw) > _MAX_STREAM or b"\0" in raw:
        raise StoreError(f"stream name must be 1..{_MAX_STREAM} UTF-8 bytes without NUL, "
                         f"got {stream!r}")
    return raw + b"\0"


class _Process:
    """This process's pid, kept current across os.fork() by an at-fork hook."""

    pid = os.getpid()

    @classmethod
    def refresh(cls) -> None:
        cls.pid = os.getpid()


_process = _Process
os.register_at_fork(after_in_child=_Process.refresh)


_current_task = trio.lowlevel.current_task
_wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled


def _no_abort(raise_cancel: Any) -> trio.lowlevel.Abort:
    # An op in the writer's hands cannot be withdrawn; the waiter learns its fate
    # (at most one commit later) and the cancellation is delivered after that.
    return trio.lowlevel.Abort.FAILED


class Store:
    """An open store. Use `open_store()`; it owns the lock, the env and the writer thread."""

    def __init__(self, path: Path, options: StoreOptions) -> None:
        self.path = path
        self.options = options
        self._pid = os.getpid()
        self._lock = DataDirLock(path)
        self._lock.acquire()
        try:
            self._open_env(options.map_size)
        except lmdb.Error as exc:
            self._lock.release()
            raise StoreError(f"cannot open store in {path}: {exc}") from None
        try:
            # A process killed inside a read txn leaves its reader slot behind,
            # pinning old pages so the file grows: clear those first.
            self.stale_readers_cleared = self.env.reader_check()
            if self.stale_readers_cleared:
                log.warning("cleared %d stale LMDB reader slot(s) left by dead processes",
                            self.stale_readers_cleared)
            self._gate = ResizeGate()
            seqs = self._load_last_seqs()
        except BaseException:
            self.env.close()
            self._lock.release()
            raise
        self._writer = GroupCommitWriter(
            self.env, seqs, sync=options.durability == "sync",
            fsync_interval=options.fsync_interval_ms / 1000,
            batch_window=options.batch_window_ms / 1000, max_batch=options.max_batch,
            map_size_max=options.map_size_max, append_db=self._wal,
            max_record_bytes=options.max_record_bytes, gate=self._gate)
        self._closed = False

    def _open_env(self, map_size: int) -> None:
        """Open the environment and its named databases (at start, and after a swap)."""
        self.env = lmdb.open(
            str(self.path), map_size=map_size, max_dbs=8, subdir=True,
            sync=self.options.durability == "sync", metasync=True, writemap=False,
            max_spare_txns=0,  # nothing cached that could cross a fork
        )
        try:
            self._wal = self.env.open_db(b"wal")
            self._ckpt = self.env.open_db(b"checkpoints")
            self._quarantine = self.env.open_db(b"quarantine")
            self._quarantine_why = self.env.open_db(b"quarantine_why")
        except BaseException:
            self.env.close()
            raise

    def _load_last_seqs(self) -> dict[bytes, int]:
        """Newest seq of every stream, found by jumping between prefixes (not a full scan)."""
        seqs: dict[bytes, int] = {}
        for db in (self._wal, self._ckpt):
            with self.env.begin(db=db) as txn:
                cursor = txn.cursor()
                found = cursor.first()
                while found:
                    prefix = cursor.key()[:-8]
                    # prefix ends in NUL; swapping it for \x01 sorts just past the stream
                    after = prefix[:-1] + b"\x01"
                    found = cursor.set_range(after)
                    if (cursor.prev() if found else cursor.last()):
                        seq = _SEQ.unpack(cursor.key()[-8:])[0]
                        seqs[prefix] = max(seqs.get(prefix, 0), seq)
                    found = cursor.set_range(after)
        return seqs

    def _check_pid(self) -> None:
        # _process.pid is refreshed by an at-fork hook: no getpid() syscall per op.
        if _process.pid != self._pid:
            raise StoreError(f"this store was opened in process {self._pid} and this is a "
                             f"forked child ({os.getpid()}): an LMDB environment must not be "
                             "used across fork; open the store in the child instead")

    @contextlib.contextmanager
    def _reading(self, db_name: str) -> Any:
        """A read txn on the named db. The handle is looked up inside the gate, so an
        online compaction that reopens the environment cannot hand us a stale one."""
        self._check_pid()
        if self._closed:
            raise StoreError("the store is closed")
        with self._gate.reading(), self.env.begin(db=getattr(self, "_" + db_name)) as txn:
            yield txn

    # -- diagnostics ---------------------------------------------------------------

    @property
    def commits(self) -> int:
        """Write transactions committed so far (each one covers a whole batch)."""
        return self._writer.commits

    @property
    def fsyncs(self) -> int:
        """Explicit fsyncs the writer ran (interval mode; sync mode fsyncs in commit)."""
        return self._writer.fsyncs

    @property
    def map_size(self) -> int:
        """The current size of the LMDB map in bytes (grows up to map_size_max)."""
        return self.env.info()["map_size"]

    def set_commit_hooks(self, before: CommitHook | None = None,
                         after: CommitHook | None = None) -> None:
        """Observe commits: `before(batch_no, ops)` runs in the writer thread just
        before `commit()`, `after(batch_no, ops)` just after it returned. For tests
        and diagnostics; keep them quick (they run on the commit path)."""
        self._writer.before_commit = before
        self._writer.after_commit = after

    def copy_to(self, path: str | os.PathLike[str], compact: bool = True) -> Path:
        """A consistent copy of the environment as `<path>/data.mdb` (hot: one read txn).

        Writers keep committing meanwhile; the copy is the state as of its start.
        Synchronous and as long as the data: run it in a thread.
        """
        self._check_pid()
        if self._closed:
            raise StoreError("the store is closed")
        target = Path(path)
        target.mkdir(parents=True, exist_ok=True)
        with self._gate.reading():  # a map resize must not swap the mapping mid-copy
            self.env.copy(str(target), compact=compact)
        return target / "data.mdb"

    async def compact_online(self) -> dict[str, Any]:
        """Compact the live environment: a compacting copy, then an atomic swap.

        Runs in the writer thread with no transaction open, so writes are paused
        (they queue and commit right after, none lost or acknowledged early) for
        the length of the copy; reads continue until the short swap itself.
        Returns sizes and the pause. On any failure the old file stays in use.
        """
        self._check_pid()
        op = ExclusiveOp(self._compact_in_writer)
        op.task = trio.lowlevel.current_task()
        self._writer.submit(op)
        return await trio.lowlevel.wait_task_rescheduled(_no_abort)

    def _compact_in_writer(self, writer: GroupCommitWriter) -> dict[str, Any]:
        started = time.monotonic()
        current = self.path / "data.mdb"
        before = current.stat().st_size
        staging = self.path / ".compact"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            self.env.copy(str(staging), compact=True)
            fd = os.open(staging / "data.mdb", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            map_size = self.env.info()["map_size"]
            with self._gate.resizing():  # no read txn may be open across the swap
                self.env.close()
                try:
                    os.replace(staging / "data.mdb", current)
                    dfd = os.open(self.path, os.O_RDONLY)
                    try:
                        os.fsync(dfd)
                    finally:
                        os.close(dfd)
                finally:
                    # Reopen whatever file is in place: the new one, or the old one if
                    # the rename failed.
                    self._open_env(map_size)
                    writer.rebind(self.env, self._wal)
        except (OSError, lmdb.Error) as exc:
            raise _lmdb_or_os_error(exc, "online compaction") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return {"bytes_before": before, "bytes_after": current.stat().st_size,
                "paused_s": time.monotonic() - started, "online": True}

    def reader_check(self) -> int:
        """Clear reader slots of dead processes; returns how many were cleared."""
        self._check_pid()
        return self.env.reader_check()

    # -- writes --------------------------------------------------------------------

    async def _submit(self, apply: Callable[[Txn], Any],
                      on_durable: Callable[[Any], None] | None = None) -> Any:
        return await self.write(WriteOp(apply, on_durable))

    def write(self, op: WriteOp) -> Awaitable[Any]:
        """Hand `op` to the writer now; await what this returns, at once, for its result.

        The lowest-level write, for callers that keep their own view of a stream
        (KeyValueState): no coroutine of its own, so the only frames between an
        agent and the writer are the caller's. The result arrives after the
        commit that carries `op` (StoreError if it failed); a cancellation is
        delivered after that, never instead of it.
        """
        if _process.pid != self._pid:
            self._check_pid()
        op.task = _current_task()
        self._writer.submit(op)
        return _wait_task_rescheduled(_no_abort)

    async def append(self, stream: str, record: Any,
                     on_durable: Callable[[int], None] | None = None) -> int:
        """Append `record` to `stream`; returns its sequence number once durable.

        `on_durable(seq)` runs in commit order before this returns, so callers
        can keep an in-memory view that matches the log exactly. Once handed to
        the writer the append cannot be withdrawn: a cancellation is delivered
        after its commit (or failure), so a returned seq is always durable and a
        raised StoreError always means nothing was stored (also for a record
        that is not plain data or is over `max_record_bytes`). The record is
        packed by the writer when its batch is written: do not mutate it until
        this returns.
        """
        return await self.write(WriteOp(None, on_durable, stream=stream_key(stream),
                                        record=record))

    async def append_many(self, stream: str, records: Iterable[Any],
                          on_durable: Callable[[list[int]], None] | None = None,
                          index: Callable[[int, Any], Iterable[tuple[str, Any]]] | None = None
                          ) -> list[int]:
        """Append several records in one op (always one transaction: all or none);
        returns their consecutive seqs once durable.

        With `index`, what `index(seq, record)` yields for each record, (other stream,
        record) pairs such as a secondary index naming the seq, is appended in the SAME
        transaction, so an index never disagrees with its stream, even after a crash.
        `index` runs in the writer thread with the transaction open: keep it a quick,
        pure function of its arguments.
        """
        prefix = stream_key(stream)
        limit = self.options.max_record_bytes
        if index is not None:
            records = list(records)  # read twice: packed now, indexed in the writer
        datas = codec.pack_many(records, limit)
        if not datas:
            return []
        pack_seq = _SEQ.pack

        def apply(tx: Txn) -> list[int]:
            first = tx.take_seqs(prefix, len(datas))
            seqs = range(first, first + len(datas))
            items = [(prefix + pack_seq(s), d) for s, d in zip(seqs, datas, strict=True)]
            cursor = tx.txn.cursor(db=self._wal)
            # MDB_APPEND (the bulk fast path) is only valid when these keys sort after
            # every key in the database, i.e. this stream holds the last key.
            at_end = not cursor.last() or cursor.key() < items[0][0]
            added = cursor.putmulti(items, overwrite=False, append=at_end)[1]
            if added != len(items):
                raise seq_taken(prefix, first)
            if index is not None:
                for seq, record in zip(seqs, records, strict=True):
                    for other, entry in index(seq, record):
                        key = stream_key(other)
                        at = tx.next_seq(key)
                        if not tx.txn.put(key + pack_seq(at), codec.pack(entry, limit),
                                          db=self._wal, overwrite=False):
                            raise seq_taken(key, at)
            return list(seqs)

        return await self._submit(apply, on_durable)

    async def write_checkpoint(self, stream: str, covered_seq: int, payload: bytes,
                               keep_tail: int = 0) -> None:
        """Store a checkpoint covering `stream` up to `covered_seq` and, in the same
        transaction, retire old checkpoints and prune the WAL nobody needs.

        Kept afterwards: the `keep_checkpoints` newest checkpoints, the WAL after
        the oldest of them, and at least the newest `keep_tail` covered records.
        Refused (StoreError, nothing written): a seq past the stream's end or not
        newer than its newest checkpoint.
        """
        prefix = stream_key(stream)
        if not isinstance(covered_seq, int) or covered_seq < 1:
            raise StoreError(f"checkpoint of {stream!r}: covered_seq must be an int >= 1, "
                             f"got {covered_seq!r}")
        if not isinstance(keep_tail, int) or keep_tail < 0:
            raise StoreError(f"checkpoint of {stream!r}: keep_tail must be an int >= 0")
        blob = await trio.to_thread.run_sync(
            codec.encode_checkpoint, covered_seq, bytes(payload), self.options.zstd_level)
        keep = self.options.keep_checkpoints

        def apply(tx: Txn) -> int:
            last = tx.last_seq(prefix)
            if covered_seq > last:
                raise StoreError(f"checkpoint of {stream!r} at seq {covered_seq} is past the "
                                 f"stream's last seq {last}")
            existing = self._seqs_of(tx.txn, self._ckpt, prefix)
            if existing and covered_seq <= existing[-1]:
                raise StoreError(f"checkpoint of {stream!r} at seq {covered_seq} is not newer "
                                 f"than the stored one at seq {existing[-1]}")
            tx.txn.put(prefix + _SEQ.pack(covered_seq), blob, db=self._ckpt)
            kept = [*existing, covered_seq][-keep:]
            for old in existing:
                if old < kept[0]:
                    tx.txn.delete(prefix + _SEQ.pack(old), db=self._ckpt)
            if len(existing) + 1 < keep:
                return 0  # fewer checkpoints than kept: the fallback is a replay from seq 1
            return self._delete_range(tx.txn, self._wal, prefix,
                                      min(kept[0], covered_seq - keep_tail))

        await self._submit(apply)

    async def prune(self, stream: str, upto_seq: int | None = None, *,
                    uncovered: bool = False) -> int:
        """Delete WAL records of `stream` with seq <= `upto_seq`; returns how many.

        Default `upto_seq`: the oldest kept checkpoint (what retention allows).
        Pruning past the newest checkpoint loses records no checkpoint covers, so
        it is refused unless `uncovered=True` (plain logs without checkpoints).
        """
        prefix = stream_key(stream)

        def apply(tx: Txn) -> int:
            ckpts = self._seqs_of(tx.txn, self._ckpt, prefix)
            upto = upto_seq
            if upto is None:
                upto = ckpts[0] if ckpts else 0
            if not uncovered and upto > (ckpts[-1] if ckpts else 0):
                raise StoreError(
                    f"prune of {stream!r} up to seq {upto} goes past its newest checkpoint "
                    f"({ckpts[-1] if ckpts else 'none'}): checkpoint first, or pass "
                    "uncovered=True for a plain log")
            return self._delete_range(tx.txn, self._wal, prefix, upto)

        return await self._submit(apply)

    async def flush(self) -> None:
        """Return once everything submitted before this call is committed."""
        await self._submit(lambda tx: None)

    @staticmethod
    def _seqs_of(txn: lmdb.Transaction, db: Any, prefix: bytes) -> list[int]:
        cursor = txn.cursor(db=db)
        seqs = []
        if cursor.set_range(prefix):
            for key in cursor.iternext(values=False):
                if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                    break
                seqs.append(_SEQ.unpack(key[-8:])[0])
        return seqs

    @staticmethod
    def _delete_range(txn: lmdb.Transaction, db: Any, prefix: bytes, upto_seq: int) -> int:
        if upto_seq < 1:
            return 0
        end = prefix + _SEQ.pack(upto_seq)
        cursor = txn.cursor(db=db)
        removed = 0
        if cursor.set_range(prefix):
            while cursor.key() <= end and cursor.key().startswith(prefix):
                if not cursor.delete():
                    break
                removed += 1
        return removed

    # -- reads -----------------------------------------------------------------------

    def read(self, stream: str, from_seq: int = 1, limit: int | None = None) \
            -> list[tuple[int, Any]]:
        """Records of `stream` with seq >= from_seq, oldest first, as (seq, record)."""
        out: list[tuple[int, Any]] = []
        if limit is None or limit > 0:
            self._scan(stream, from_seq, lambda seq, rec: out.append((seq, rec)),
                       check_gaps=False, limit=limit)
        return out

    def replay(self, stream: str, from_seq: int, fn: Callable[[int, Any], Any]) -> int:
        """Call `fn(seq, record)` for every record of `stream` from `from_seq` on, in
        one read transaction; returns the last seq seen (from_seq - 1 if none).

        StoreError if the WAL does not continue gap-free from `from_seq` (records
        were pruned that nothing covers). Synchronous: run long replays in a thread.
        """
        def each(first: int, records: list[Any]) -> None:
            for seq, record in enumerate(records, first):
                fn(seq, record)

        return self.replay_chunks(stream, from_seq, each)

    def replay_chunks(self, stream: str, from_seq: int,
                      fn: Callable[[int, list[Any]], Any], chunk: int = 4096) -> int:
        """Like `replay`, but hands over records in lists: `fn(first_seq, records)`.

        The fast path for recovery: values are read without their keys and decoded
        a chunk at a time. Gap-freeness is still proven before a chunk is handed
        over: keys strictly increase, so m records that start at seq s and whose
        last key is s + m - 1 are exactly s..s+m-1.
        """
        prefix = stream_key(stream)
        pack_key = _SEQ.pack
        from_seq = max(1, from_seq)
        with self._reading("wal") as txn:
            cursor = txn.cursor()
            # The stream's last key in this snapshot bounds the run.
            end = prefix[:-1] + b"\x01"
            found = cursor.prev() if cursor.set_range(end) else cursor.last()
            if not found or not cursor.key().startswith(prefix):
                return from_seq - 1
            last = int.from_bytes(cursor.key()[len(prefix):], "big")
            if last < from_seq:
                return from_seq - 1
            cursor.set_range(prefix + pack_key(from_seq))
            expect = from_seq
            values = cursor.iternext(keys=False)
            while expect <= last:
                vals = list(itertools.islice(values, min(chunk, last - expect + 1)))
                if len(vals) != min(chunk, last - expect + 1) or \
                        cursor.key() != prefix + pack_key(expect + len(vals) - 1):
                    raise self._gap_error(txn, stream, prefix, expect)
                fn(expect, self._decode_run(stream, expect, vals))
                expect += len(vals)
        return expect - 1

    def _decode_run(self, stream: str, first: int, vals: list[bytes]) -> list[Any]:
        """msgpack-decode consecutive records in one streaming pass, with limits.

        The object count and the bytes consumed must match the records exactly;
        otherwise each record is decoded alone to name the bad one.
        """
        lim = self.options.max_record_bytes
        buf = b"".join(vals)
        unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, max_buffer_size=max(1, len(buf)),
            max_bin_len=lim, max_str_len=lim, max_array_len=lim, max_map_len=lim)
        unpacker.feed(buf)
        try:
            records = list(unpacker)
            if len(records) == len(vals) and unpacker.tell() == len(buf):
                return records
        except (ValueError, msgpack.UnpackException):
            pass
        for seq, value in enumerate(vals, first):
            try:
                codec.unpack(value, lim)
            except StoreError as exc:
                raise StoreError(f"stream {stream!r} seq {seq}: {exc}") from None
        raise StoreError(f"stream {stream!r}: records {first}..{first + len(vals) - 1} "
                         "do not decode one value each")

    @staticmethod
    def _gap_error(txn: lmdb.Transaction, stream: str, prefix: bytes,
                   expect: int) -> StoreError:
        cursor = txn.cursor()
        found = expect - 1
        if cursor.set_range(prefix + _SEQ.pack(expect)):
            for key in cursor.iternext(values=False):
                if not key.startswith(prefix):
                    break
                seq = int.from_bytes(key[len(prefix):], "big")
                if seq != expect:
                    found = seq
                    break
                expect += 1
        return StoreError(f"stream {stream!r}: WAL jumps from seq {expect - 1} to {found}; "
                          f"records {expect}..{found - 1} were pruned and no verified "
                          "checkpoint covers them")

    def _scan(self, stream: str, from_seq: int, fn: Callable[[int, Any], Any],
              check_gaps: bool, limit: int | None = None) -> int:
        prefix = stream_key(stream)
        plen = len(prefix)
        klen = plen + 8
        size_limit = self.options.max_record_bytes
        unpack = codec.unpack
        expect = from_seq = max(1, from_seq)
        count = 0
        with self._reading("wal") as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix + _SEQ.pack(from_seq)):
                for key, value in cursor.iternext():
                    if len(key) != klen or not key.startswith(prefix):
                        break
                    seq = int.from_bytes(key[plen:], "big")
                    if check_gaps and seq != expect:
                        raise StoreError(
                            f"stream {stream!r}: WAL jumps from seq {expect - 1} to {seq}; "
                            f"records {expect}..{seq - 1} were pruned and no verified "
                            "checkpoint covers them")
                    expect = seq + 1
                    fn(seq, unpack(value, size_limit))
                    count += 1
                    if count == limit:
                        break
        return expect - 1

    def first_seq(self, stream: str) -> int:
        """The oldest seq still in the WAL of `stream` (0 if it has none)."""
        prefix = stream_key(stream)
        with self._reading("wal") as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                key = cursor.key()
                if key.startswith(prefix) and len(key) == len(prefix) + 8:
                    return _SEQ.unpack(key[-8:])[0]
        return 0

    def last_seq(self, stream: str) -> int:
        """The newest committed sequence number of `stream` (0 if none)."""
        return self._writer.committed.get(stream_key(stream), 0)

    def streams(self) -> list[str]:
        """Names of every stream with WAL records or checkpoints."""
        return sorted(p[:-1].decode("utf-8") for p in list(self._writer.committed))

    def checkpoints(self, stream: str) -> list[tuple[int, bytes]]:
        """(covered seq, blob) of every stored checkpoint of `stream`, oldest first."""
        prefix = stream_key(stream)
        with self._reading("ckpt") as txn:
            return [(seq, bytes(txn.get(prefix + _SEQ.pack(seq))))
                    for seq in self._seqs_of(txn, self._ckpt, prefix)]

    def _checkpoint_blob(self, prefix: bytes, seq: int) -> bytes | None:
        with self._reading("ckpt") as txn:
            blob = txn.get(prefix + _SEQ.pack(seq))
            return None if blob is None else bytes(blob)

    async def load_checkpoint(self, stream: str) -> tuple[int, bytes] | None:
        """The newest checkpoint of `stream` that verifies, as (covered seq, payload).

        A checkpoint that fails verification is logged loudly and moved to the
        quarantine database (its bytes kept as found, with the reason); the next
        older one is tried. Unverified bytes are never returned.
        """
        prefix = stream_key(stream)
        with self._reading("ckpt") as txn:
            seqs = self._seqs_of(txn, self._ckpt, prefix)
        for seq in reversed(seqs):
            blob = self._checkpoint_blob(prefix, seq)
            if blob is None:
                continue
            try:
                covered, payload = await trio.to_thread.run_sync(codec.decode_checkpoint, blob)
                if covered != seq:
                    raise CorruptCheckpointError(f"header says seq {covered}, key says {seq}")
                return covered, payload
            except CorruptCheckpointError as exc:
                log.error("QUARANTINED bad checkpoint of stream %r at seq %d: %s; falling "
                          "back to an older checkpoint and a longer replay", stream, seq, exc)
                await self._quarantine_checkpoint(prefix, seq, blob, str(exc))
        return None

    async def _quarantine_checkpoint(self, prefix: bytes, seq: int, blob: bytes,
                                     reason: str) -> None:
        key = prefix + _SEQ.pack(seq)
        why = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {reason}".encode()

        def move(tx: Txn) -> None:
            tx.txn.put(key, blob, db=self._quarantine)
            tx.txn.put(key, why, db=self._quarantine_why)
            tx.txn.delete(key, db=self._ckpt)

        try:
            await self._submit(move)
        except StoreError as exc:
            # Still skipped (never loaded); it stays put and is re-checked next time.
            log.error("could not move the bad checkpoint to quarantine: %s", exc)

    def quarantined(self) -> list[tuple[str, int]]:
        """(stream, seq) of every quarantined checkpoint."""
        with self._reading("quarantine") as txn:
            return [(k[:-9].decode("utf-8", "replace"), _SEQ.unpack(k[-8:])[0])
                    for k in txn.cursor().iternext(values=False)]

    def quarantined_checkpoint(self, stream: str, seq: int) -> tuple[bytes, str] | None:
        """The bytes of a quarantined checkpoint, exactly as found, and why it was moved."""
        key = stream_key(stream) + _SEQ.pack(seq)
        with self._reading("quarantine") as txn:
            blob = txn.get(key)
            why = txn.get(key, db=self._quarantine_why)
        if blob is None:
            return None
        return bytes(blob), bytes(why or b"").decode("utf-8", "replace")

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, token: trio.lowlevel.TrioToken) -> None:
        self._writer.start(token)

    def close(self) -> None:
        """Commit what was submitted, fsync, close the env, release the lock."""
        self._check_pid()
        if self._closed:
            return
        self._writer.stop()
        self._closed = True
        with contextlib.suppress(lmdb.Error):
            self.env.sync(True)
        with self._gate.resizing():  # no read may be inside the env as it closes
            self.env.close()
        self._lock.release()


def _lmdb_or_os_error(exc: BaseException, what: str) -> StoreError:
    return DiskError(f"{what} failed: {exc}; the store keeps using the file in place")


@contextlib.asynccontextmanager
async def open_store(path: str | os.PathLike[str],
                     options: StoreOptions | None = None) -> AsyncIterator[Store]:
    """Open (creating if needed) the store in `path` for the current trio run.

    Raises DataDirLockedError if another process holds the data directory.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    store = await trio.to_thread.run_sync(Store, path, options or StoreOptions())
    try:
        store.start(trio.lowlevel.current_trio_token())
        yield store
    finally:
        # The writer drains in a thread; shield so a cancelled shutdown still flushes.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store.close)
