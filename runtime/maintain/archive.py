"""Event archives: old events moved out of LMDB into zstd files with a checksum.

File format (one file per archived range, named events-<first>-<last>.opa):

    header  magic "OPAR", version, count, first seq, last seq, newest ts,
            raw length, blake2b-256 of the header fields + body
    body    zstd(msgpack([[seq, record], ...]))

Archiving writes the file (temporary name, fsync, rename, fsync of the folder)
before the events are pruned from the store, so a crash in between leaves the
events in both places, never in neither; the next run rewrites the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import zstandard

from runtime.events import STREAM as EVENTS_STREAM
from runtime.events import prune_events
from runtime.maintain.report import TaskResult
from runtime.store import Store

_MAGIC = b"OPAR"
_VERSION = 1
_HEADER = struct.Struct(">4sBQQQdQ32s")
_MAX_RAW = 256 << 20
_CHUNK = 50_000  # events per archive file: bounds memory whatever the backlog
SUFFIX = ".opa"


class ArchiveError(Exception):
    """An archive file is damaged or not an archive."""


def _digest(count: int, first: int, last: int, newest: float, raw_len: int,
            body: bytes) -> bytes:
    head = struct.pack(">QQQdQ", count, first, last, newest, raw_len)
    return hashlib.blake2b(head + body, digest_size=32).digest()


def write_archive(directory: Path, events: list[tuple[int, Any]]) -> Path:
    """Write `events` ([(seq, record)], ascending) durably; returns the file."""
    raw = msgpack.packb([[seq, rec] for seq, rec in events], use_bin_type=True)
    body = zstandard.ZstdCompressor(level=9).compress(raw)
    first, last = events[0][0], events[-1][0]
    newest = max(float(rec[0]) for _, rec in events)
    header = _HEADER.pack(_MAGIC, _VERSION, len(events), first, last, newest, len(raw),
                          _digest(len(events), first, last, newest, len(raw), body))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"events-{first:020d}-{last:020d}{SUFFIX}"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise ArchiveError(f"{path}: truncated ({len(head)} bytes)")
    magic, version, count, first, last, newest, raw_len, digest = _HEADER.unpack(head)
    if magic != _MAGIC or version != _VERSION:
        raise ArchiveError(f"{path}: not an outpost event archive")
    return {"count": count, "first": first, "last": last, "newest_ts": newest,
            "raw_len": raw_len, "digest": digest}


def read_archive(path: Path) -> list[tuple[int, Any]]:
    """The events in an archive, after verifying its checksum (ArchiveError if bad)."""
    h = read_header(path)
    body = path.read_bytes()[_HEADER.size:]
    if _digest(h["count"], h["first"], h["last"], h["newest_ts"], h["raw_len"],
               body) != h["digest"]:
        raise ArchiveError(f"{path}: checksum mismatch")
    if h["raw_len"] > _MAX_RAW:
        raise ArchiveError(f"{path}: claims {h['raw_len']} bytes, over the {_MAX_RAW} limit")
    try:
        raw = zstandard.ZstdDecompressor().decompress(body, max_output_size=h["raw_len"])
        items = msgpack.unpackb(raw, raw=False, strict_map_key=False,
                                max_array_len=h["count"] + 1)
    except (zstandard.ZstdError, ValueError, msgpack.UnpackException) as exc:
        raise ArchiveError(f"{path}: cannot decode: {exc}") from None
    if len(items) != h["count"]:
        raise ArchiveError(f"{path}: holds {len(items)} events, header says {h['count']}")
    return [(seq, rec) for seq, rec in items]


def archives(directory: Path) -> Iterator[Path]:
    if directory.is_dir():
        yield from sorted(directory.glob(f"events-*{SUFFIX}"))


async def archive_events(store: Store, directory: Path, older_than_days: float,
                         keep_days: float, now: float | None = None) -> TaskResult:
    """Move events older than `older_than_days` into archives; delete archives whose
    newest event is older than `keep_days`."""
    import trio

    now = time.time() if now is None else now
    cutoff = now - older_than_days * 86400
    result = TaskResult("archive")
    archived = files = 0
    while True:
        chunk: list[tuple[int, Any]] = []

        def collect(seq: int, rec: Any, chunk: list = chunk) -> None:
            if len(chunk) < _CHUNK and rec[0] < cutoff:
                chunk.append((seq, rec))

        first = store.first_seq(EVENTS_STREAM)
        if first == 0:
            break
        # Events are appended in time order: the old ones are a prefix.
        await trio.to_thread.run_sync(_scan_prefix, store, first, collect, chunk)
        if not chunk:
            break
        await trio.to_thread.run_sync(write_archive, directory, chunk)
        await prune_events(store, chunk[-1][0])  # and their index entries
        archived += len(chunk)
        files += 1
    removed = 0
    for path in archives(directory):
        try:
            if read_header(path)["newest_ts"] < now - keep_days * 86400:
                path.unlink()
                removed += 1
        except ArchiveError as exc:
            result.problems.append(str(exc))
    result.summary = (f"archived {archived} event(s) into {files} file(s); "
                      f"deleted {removed} expired archive(s)")
    result.details = {"archived_events": archived, "archive_files": files,
                      "expired_removed": removed}
    return result


class _Stop(Exception):
    pass


def _scan_prefix(store: Store, first: int, collect, chunk: list) -> None:
    def step(seq: int, rec: Any) -> None:
        before = len(chunk)
        collect(seq, rec)
        if len(chunk) == before:
            raise _Stop
    with contextlib.suppress(_Stop):
        store.replay(EVENTS_STREAM, first, step)
