"""An agent's state at the mark, and putting it back when a rollout rolls back.

The mark is taken when an instance has stopped on its old release and before
it starts on the new one: a snapshot of its state and the state's seq,
written as a file in the store's own checkpoint format (zstd, checksummed;
fsync, rename, fsync of the folder) before the new version starts, so the
file is the proof that an instance may have run the new version (the seq is
also kept in the rollout record once the step has switched). The rollout
keeps its own copy because the store's retention may retire the checkpoint
of that seq while a long gate runs.

Rolling back restores the state through the normal durable write path: the
ops that turn the state as it is into the state at the mark (sets and
deletes, new records of the state's WAL: history is never rewritten). Before
that, what the new version wrote is kept, not destroyed: every WAL record
after the mark and the state as the new version left it go into an archive
in the event archives' checksummed zstd format (runtime.maintain.archive),
under `<archive_dir>/rollbacks/<agent>-<rollout>/<instance>/`. Restoring is
idempotent (a restart in the middle redoes it; the archive is written once).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import trio

from runtime.maintain.archive import archives, write_archive
from runtime.releases.store import fsync_dir
from runtime.store import KeyValueState, Store, StoreError, codec

MARK_SUFFIX = ".mark"


def mark_prefix(agent: str, rollout: int) -> str:
    """The start of the file names of one rollout's marks ('+' is in no agent name)."""
    return f"{agent}+{rollout}+"


def mark_path(directory: Path, agent: str, rollout: int, instance: str) -> Path:
    return directory / f"{mark_prefix(agent, rollout)}{instance}{MARK_SUFFIX}"


def write_marks(marks: list[tuple[Path, int, dict[str, Any]]]) -> None:
    """Durably write snapshots (path, seq, state), all in one folder (blocking: a thread)."""
    folders = set()
    for path, seq, state in marks:
        blob = codec.encode_checkpoint(seq, codec.pack(state, codec.MAX_CHECKPOINT_BYTES))
        if path.parent not in folders and not path.parent.is_dir():
            path.parent.mkdir(parents=True)
            fsync_dir(path.parent.parent)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folders.add(path.parent)
    for folder in folders:
        fsync_dir(folder)


def read_mark(path: Path) -> tuple[int, dict[str, Any]]:
    """(seq, state) of a mark file; StoreError if it is missing or does not verify."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"the state mark {path} cannot be read: {exc}") from None
    seq, payload = codec.decode_checkpoint(blob)
    state = codec.unpack(payload, codec.MAX_CHECKPOINT_BYTES)
    if not isinstance(state, dict):
        raise StoreError(f"the state mark {path} does not hold a state map")
    return seq, state


def restore_ops(now: dict[str, Any], mark: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """The ops that turn state `now` into state `mark`: deletes of keys the mark lacks,
    sets of keys whose value differs."""
    ops: list[tuple[str, str, Any]] = [("del", k, None) for k in now if k not in mark]
    ops += [("set", k, v) for k, v in mark.items() if k not in now or now[k] != v
            or type(now[k]) is not type(v)]
    return ops


def _archive(directory: Path, instance: str, mark_seq: int, records: list[tuple[int, Any]],
             state: dict[str, Any]) -> Path | None:
    if any(archives(directory)):
        return None  # written by an earlier attempt of this rollback
    ts = time.time()
    items = [(i, [ts, "discarded-write", instance, {"seq": seq, "op": op}])
             for i, (seq, op) in enumerate(records, 1)]
    items.append((len(items) + 1, [ts, "state-before-rollback", instance,
                                   {"mark_seq": mark_seq, "state": state}]))
    return write_archive(directory, items)


async def restore_to_mark(store: Store, state: KeyValueState, instance: str, mark: Path,
                          archive_dir: Path) -> dict[str, Any]:
    """Put agent `instance`'s `state` back as it was at the mark in file `mark`, keeping
    what is discarded in an archive in `archive_dir`. Returns what was done."""
    seq, at_mark = await trio.to_thread.run_sync(read_mark, mark)
    now = state.to_dict()
    ops = restore_ops(now, at_mark)
    if not ops:
        return {"restored": 0, "discarded": 0}
    stream = state.stream
    records = await trio.to_thread.run_sync(store.read, stream, seq + 1)
    written = await trio.to_thread.run_sync(_archive, archive_dir, instance, seq, records, now)
    # Distinct keys: sent together they share one group commit instead of one each.
    async with trio.open_nursery() as nursery:
        for kind, key, value in ops:
            if kind == "del":
                nursery.start_soon(state.delete, key)
            else:
                nursery.start_soon(state.set, key, value)
    return {"restored": len(ops), "discarded": len(records),
            "archive": None if written is None else str(written.parent)}
