"""The durable store: named streams of msgpack records (the WAL) and their checkpoints.

It knows nothing about agents. A stream is a name; a record is plain data; a
checkpoint is opaque bytes that cover a stream up to a sequence number. All
writes go through the group-commit writer; reads are direct LMDB read
transactions.

LMDB layout (named databases in one environment, so a checkpoint and the pruning
of the WAL it covers commit atomically):

    wal         stream NUL seq(>Q)  -> msgpack record
    checkpoints stream NUL seq(>Q)  -> checkpoint blob (see codec)
    quarantine  stream NUL seq(>Q)  -> a checkpoint that failed verification
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import trio

from runtime.store import codec
from runtime.store.errors import CorruptCheckpointError, StoreError
from runtime.store.lock import DataDirLock
from runtime.store.writer import GroupCommitWriter, Txn, WriteOp

log = logging.getLogger("outpost.store")

_SEQ = struct.Struct(">Q")
_MAX_STREAM = 200


@dataclass(frozen=True)
class StoreOptions:
    """How the store opens and commits. Defaults suit a small edge host."""

    map_size: int = 64 << 20
    map_size_max: int = 1 << 30
    durability: str = "sync"  # "sync": ack after fsync; "interval": ack at once
    fsync_interval_ms: int = 100  # interval mode: at most this much acked data at risk
    batch_window_ms: float = 0.0
    max_batch: int = 4096
    zstd_level: int = 3
    max_record_bytes: int = codec.MAX_RECORD_BYTES


def _stream_key(stream: str) -> bytes:
    raw = stream.encode("utf-8")
    if not raw or len(raw) > _MAX_STREAM or b"\0" in raw:
        raise StoreError(f"stream name must be 1..{_MAX_STREAM} bytes without NUL: {stream!r}")
    return raw + b"\0"


class Store:
    """An open store. Use `open_store()`; it owns the lock, the env and the writer thread."""

    def __init__(self, path: Path, options: StoreOptions) -> None:
        self.path = path
        self.options = options
        self._pid = os.getpid()
        self._lock = DataDirLock(path)
        self._lock.acquire()
        try:
            self.env = lmdb.open(
                str(path), map_size=options.map_size, max_dbs=8, subdir=True,
                sync=options.durability == "sync", metasync=True, writemap=False,
                max_spare_txns=0,  # nothing cached that could cross a fork
            )
        except lmdb.Error as exc:
            self._lock.release()
            raise StoreError(f"cannot open store in {path}: {exc}") from None
        stale = self.env.reader_check()
        if stale:
            log.warning("cleared %d stale LMDB reader slot(s) left by dead processes", stale)
        self._wal = self.env.open_db(b"wal")
        self._ckpt = self.env.open_db(b"checkpoints")
        self._quarantine = self.env.open_db(b"quarantine")
        self._seqs = self._load_last_seqs()
        self._writer = GroupCommitWriter(
            self.env, self._seqs, sync=options.durability == "sync",
            fsync_interval=options.fsync_interval_ms / 1000,
            batch_window=options.batch_window_ms / 1000, max_batch=options.max_batch,
            map_size_max=options.map_size_max)

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
        if os.getpid() != self._pid:
            raise StoreError("an LMDB environment must not be used across fork")

    @property
    def commits(self) -> int:
        """Write transactions committed so far (each one covers a whole batch)."""
        return self._writer.commits

    # -- writes --------------------------------------------------------------------

    async def _submit(self, apply: Callable[[Txn], Any],
                      on_durable: Callable[[Any], None] | None = None) -> Any:
        self._check_pid()
        op = WriteOp(apply, on_durable)
        self._writer.submit(op)
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result

    async def append(self, stream: str, record: Any,
                     on_durable: Callable[[int], None] | None = None) -> int:
        """Append `record` to `stream`; returns its sequence number once durable.

        `on_durable(seq)` runs in commit order before this returns, so callers
        can keep an in-memory view that matches the log exactly.
        """
        prefix = _stream_key(stream)
        data = codec.pack(record, self.options.max_record_bytes)
        wal = self._wal

        def apply(tx: Txn) -> int:
            seq = tx.next_seq(prefix)
            tx.txn.put(prefix + _SEQ.pack(seq), data, db=wal, append=True)
            return seq

        return await self._submit(apply, on_durable)

    async def append_many(self, stream: str, records: Iterable[Any]) -> list[int]:
        """Append several records in one op (always in one transaction); their seqs."""
        prefix = _stream_key(stream)
        limit = self.options.max_record_bytes
        datas = [codec.pack(r, limit) for r in records]
        wal = self._wal

        def apply(tx: Txn) -> list[int]:
            put = tx.txn.put
            seqs = []
            for data in datas:
                seq = tx.next_seq(prefix)
                put(prefix + _SEQ.pack(seq), data, db=wal, append=True)
                seqs.append(seq)
            return seqs

        return await self._submit(apply)

    async def write_checkpoint(self, stream: str, covered_seq: int, payload: bytes,
                               keep_tail: int = 0) -> None:
        """Store a checkpoint covering `stream` up to `covered_seq` and, in the same
        transaction, prune the WAL it covers except the newest `keep_tail` records."""
        prefix = _stream_key(stream)
        blob = await trio.to_thread.run_sync(
            codec.encode_checkpoint, covered_seq, payload, self.options.zstd_level)

        def apply(tx: Txn) -> None:
            tx.txn.put(prefix + _SEQ.pack(covered_seq), blob, db=self._ckpt)
            self._delete_range(tx.txn, self._wal, prefix, covered_seq - keep_tail)

        await self._submit(apply)

    async def prune(self, stream: str, upto_seq: int) -> int:
        """Delete WAL records of `stream` with seq <= upto_seq; returns how many."""
        prefix = _stream_key(stream)
        return await self._submit(
            lambda tx: self._delete_range(tx.txn, self._wal, prefix, upto_seq))

    async def flush(self) -> None:
        """Return once everything submitted before this call is committed."""
        await self._submit(lambda tx: None)

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
        self._check_pid()
        prefix = _stream_key(stream)
        out: list[tuple[int, Any]] = []
        limit_bytes = self.options.max_record_bytes
        with self.env.begin(db=self._wal) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix + _SEQ.pack(max(0, from_seq))):
                return out
            for key, value in cursor:
                if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                    break
                out.append((_SEQ.unpack(key[-8:])[0], codec.unpack(value, limit_bytes)))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def last_seq(self, stream: str) -> int:
        """The newest committed sequence number of `stream` (0 if none)."""
        return self._seqs.get(_stream_key(stream), 0)

    def streams(self) -> list[str]:
        """Names of every stream with WAL records or checkpoints."""
        return sorted(p[:-1].decode("utf-8") for p in self._seqs)

    def checkpoints(self, stream: str) -> list[tuple[int, bytes]]:
        """(covered seq, blob) of every stored checkpoint of `stream`, oldest first."""
        prefix = _stream_key(stream)
        with self.env.begin(db=self._ckpt) as txn:
            cursor = txn.cursor()
            found = []
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                        break
                    found.append((_SEQ.unpack(key[-8:])[0], bytes(value)))
        return found

    async def load_checkpoint(self, stream: str) -> tuple[int, bytes] | None:
        """The newest checkpoint of `stream` that verifies, as (covered seq, payload).

        A checkpoint that fails verification is logged loudly and moved to the
        quarantine database (its bytes are kept for inspection); the next older
        one is tried. Unverified bytes are never returned.
        """
        prefix = _stream_key(stream)
        for seq, blob in reversed(self.checkpoints(stream)):
            try:
                covered, payload = codec.decode_checkpoint(blob)
                if covered != seq:
                    raise CorruptCheckpointError(f"header says seq {covered}, key says {seq}")
                return covered, payload
            except CorruptCheckpointError as exc:
                log.error("QUARANTINED bad checkpoint of stream %r at seq %d: %s; "
                          "falling back to an older checkpoint and a longer replay",
                          stream, seq, exc)
                key = prefix + _SEQ.pack(seq)

                def move(tx: Txn, key: bytes = key, blob: bytes = blob) -> None:
                    tx.txn.put(key, blob, db=self._quarantine)
                    tx.txn.delete(key, db=self._ckpt)

                await self._submit(move)
        return None

    def quarantined(self) -> list[tuple[str, int]]:
        """(stream, seq) of every quarantined checkpoint."""
        with self.env.begin(db=self._quarantine) as txn:
            return [(k[:-9].decode("utf-8", "replace"), _SEQ.unpack(k[-8:])[0])
                    for k in txn.cursor().iternext(values=False)]

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, token: trio.lowlevel.TrioToken) -> None:
        self._writer.start(token)

    def close(self) -> None:
        """Commit what was submitted, fsync, close the env, release the lock."""
        self._writer.stop()
        with contextlib.suppress(lmdb.Error):
            self.env.sync(True)
        self.env.close()
        self._lock.release()


@contextlib.asynccontextmanager
async def open_store(path: str | os.PathLike[str],
                     options: StoreOptions | None = None) -> AsyncIterator[Store]:
    """Open (creating if needed) the store in `path` for the current trio run.

    Raises DataDirLockedError if another process holds the data directory.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    store = Store(path, options or StoreOptions())
    try:
        store.start(trio.lowlevel.current_trio_token())
        yield store
    finally:
        # The writer drains in a thread; shield so a cancelled shutdown still flushes.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store.close)
