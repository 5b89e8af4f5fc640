"""`verify`: prove the data dir is sound, or name exactly what is not.

Per stream: every checkpoint's checksum; for key-value state streams, the
digest of each verified checkpoint + replay of the WAL after it must equal the
digest of a full replay from seq 1 (where the WAL still starts at 1) and of
every other checkpoint + replay; every WAL record is read and decoded, and the
WAL must be gap-free after the oldest verified checkpoint. Then every archive's
checksum. Memory is one stream's state at a time, not the data size.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.maintain.archive import ArchiveError, archives, read_archive
from runtime.maintain.report import TaskResult
from runtime.store import Store, StoreError, codec
from runtime.store.errors import CorruptCheckpointError
from runtime.store.kvstate import apply_op, digest_of

STATE_STREAM = re.compile(r"^agent/.+/state$")

Progress = Callable[[int, int, str], None]


def _replay_digest(store: Store, stream: str, data: dict, from_seq: int) -> tuple[str, int]:
    last = store.replay(stream, from_seq, lambda seq, op: apply_op(data, op))
    return digest_of(data), last


def _verify_stream(store: Store, stream: str, result: TaskResult) -> dict[str, Any]:
    info: dict[str, Any] = {"first_seq": store.first_seq(stream),
                            "last_seq": store.last_seq(stream)}
    good: list[tuple[int, bytes]] = []
    for seq, blob in store.checkpoints(stream):
        try:
            covered, payload = codec.decode_checkpoint(blob)
            if covered != seq:
                raise CorruptCheckpointError(f"header says seq {covered}")
        except CorruptCheckpointError as exc:
            result.problems.append(f"stream {stream!r}: checkpoint at seq {seq} is bad: {exc}")
            continue
        good.append((seq, payload))
    info["checkpoints"] = [seq for seq, _ in good]
    first = info["first_seq"]

    if STATE_STREAM.match(stream):
        digests: dict[str, str] = {}
        for seq, payload in good:
            if first and first > seq + 1:
                continue  # WAL after this older checkpoint was retired with it
            try:
                data = codec.unpack(payload, codec.MAX_CHECKPOINT_BYTES)
                if not isinstance(data, dict):
                    raise StoreError("checkpoint payload is not a map")
                digests[f"checkpoint@{seq}+replay"], _ = _replay_digest(
                    store, stream, data, seq + 1)
            except (StoreError, ValueError) as exc:
                result.problems.append(f"stream {stream!r}: checkpoint at seq {seq} + replay "
                                       f"failed: {exc}")
        if first in (0, 1) and not (first == 0 and good):
            try:
                digests["full replay"], _ = _replay_digest(store, stream, {}, 1)
            except (StoreError, ValueError) as exc:
                result.problems.append(f"stream {stream!r}: full replay failed: {exc}")
        elif not digests:
            result.problems.append(
                f"stream {stream!r}: WAL starts at seq {first} and no verified checkpoint "
                f"covers seqs 1..{first - 1}: state cannot be rebuilt")
        if len(set(digests.values())) > 1:
            result.problems.append(f"stream {stream!r}: recovery paths disagree: {digests}")
        info["digests"] = digests
    else:
        try:
            store.replay(stream, max(first, 1), lambda seq, rec: None)
        except (StoreError, ValueError) as exc:
            result.problems.append(f"stream {stream!r}: unreadable WAL: {exc}")
    return info


def verify(store: Store, archive_dir: Path | None, progress: Progress | None = None) \
        -> TaskResult:
    """Check everything; synchronous (run it in a thread from trio)."""
    result = TaskResult("verify")
    streams = store.streams()
    paths = list(archives(archive_dir)) if archive_dir else []
    total = len(streams) + len(paths)
    details: dict[str, Any] = {"streams": {}, "archives": 0}
    for i, stream in enumerate(streams):
        if progress:
            progress(i, total, stream)
        details["streams"][stream] = _verify_stream(store, stream, result)
    for j, path in enumerate(paths):
        if progress:
            progress(len(streams) + j, total, path.name)
        try:
            read_archive(path)
            details["archives"] += 1
        except (ArchiveError, OSError) as exc:
            result.problems.append(f"archive {path}: {exc}")
    quarantined = store.quarantined()
    if quarantined:
        details["quarantined_checkpoints"] = [f"{s}@{q}" for s, q in quarantined]
    if progress:
        progress(total, total, "done")
    result.details = details
    result.summary = (f"verified {len(streams)} stream(s) and {details['archives']} archive(s): "
                      + ("ok" if result.ok else f"{len(result.problems)} problem(s)"))
    return result
