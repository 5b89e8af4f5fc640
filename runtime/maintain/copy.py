"""Whole-environment copies: backup, restore, and offline compaction.

A backup is a folder `outpost-backup-<UTC time>/` holding a compacted LMDB copy
(`data.mdb`, taken in one read transaction, so it is consistent while writers
run) and `manifest.json` with the file's size and blake2b, plus the digest of
every state stream as verified in the copy. A restore checks the manifest,
verifies a staged copy, compares digests, keeps the replaced file, and only then
swaps the new file in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from runtime import __version__
from runtime.maintain.progress import Progress, reporting
from runtime.maintain.report import MaintainError, TaskResult
from runtime.maintain.verify import verify
from runtime.store import Store, StoreOptions

MANIFEST = "manifest.json"
_MANIFEST_MAX = 16 << 20


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_copy(path: Path, cleanup: bool = True) -> Iterator[Store]:
    """A Store over a folder (no writer thread started): for verification and reads.

    `cleanup` removes the lock files opening left behind; never for a live data dir,
    whose outpost.lock other processes must keep finding.
    """
    store = Store(path, StoreOptions())
    try:
        yield store
    finally:
        store.close()
        if cleanup:
            for leftover in ("lock.mdb", "outpost.lock"):
                with contextlib.suppress(FileNotFoundError):
                    (path / leftover).unlink()


@contextlib.contextmanager
def watch_size(path: Path, total: int, progress: Progress | None, label: str) -> Iterator[None]:
    """Report `path`'s growing size toward `total` while a copy without callbacks runs."""
    if progress is None:
        yield
        return

    def report() -> None:
        with contextlib.suppress(OSError):
            progress(min(path.stat().st_size, total), total, label)

    with reporting(report):
        yield
    progress(total, total, label)


def _state_digests(result: TaskResult) -> dict[str, str]:
    out = {}
    for stream, info in result.details.get("streams", {}).items():
        digests = set(info.get("digests", {}).values())
        if len(digests) == 1:
            out[stream] = digests.pop()
    return out


def backup(store: Store, dest_root: Path, progress: Progress | None = None) -> TaskResult:
    """Hot, consistent, compacted backup of `store` into a new folder under `dest_root`."""
    result = TaskResult("backup")
    dest_root.mkdir(parents=True, exist_ok=True)
    name = time.strftime("outpost-backup-%Y%m%dT%H%M%SZ", time.gmtime())
    final = dest_root / name
    n = 1
    while final.exists():
        n += 1
        final = dest_root / f"{name}-{n}"
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    source_size = (store.path / "data.mdb").stat().st_size
    with watch_size(staging / "data.mdb", source_size, progress, "copying"):
        data = store.copy_to(staging, compact=True)
    fsync_path(data)
    with open_copy(staging) as copy:
        checked = verify(copy, None)
    if not checked.ok:
        shutil.rmtree(staging, ignore_errors=True)
        result.problems.extend(f"backup copy: {p}" for p in checked.problems)
        return result
    manifest = {
        "format": 1,
        "outpost": __version__,
        "created": time.time(),
        "source": str(store.path),
        "files": {"data.mdb": {"bytes": data.stat().st_size, "blake2b": file_digest(data)}},
        "state_digests": _state_digests(checked),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    fsync_path(staging / MANIFEST)
    fsync_path(staging)
    os.replace(staging, final)
    fsync_path(dest_root)
    result.summary = f"backup written to {final} ({manifest['files']['data.mdb']['bytes']} bytes)"
    result.details = {"path": str(final), **manifest}
    return result


def read_manifest(source: Path) -> dict:
    path = source / MANIFEST
    if not path.is_file():
        raise MaintainError(f"{source} is not an outpost backup: no {MANIFEST}")
    if path.stat().st_size > _MANIFEST_MAX:
        raise MaintainError(f"{path}: manifest larger than {_MANIFEST_MAX} bytes")
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest["files"]["data.mdb"]["blake2b"], str):
            raise TypeError("blake2b is not a string")
    except (ValueError, KeyError, TypeError) as exc:
        raise MaintainError(f"{path}: unreadable manifest ({exc})") from None
    return manifest


def restore(data_dir: Path, source: Path, progress: Progress | None = None) -> TaskResult:
    """Replace the store in `data_dir` with the backup at `source`. The caller holds the
    data-dir lock (restore is offline only). The replaced file is kept beside it."""
    result = TaskResult("restore")
    manifest = read_manifest(source)
    expected = manifest["files"]["data.mdb"]
    src = source / "data.mdb"
    if not src.is_file() or src.stat().st_size != expected["bytes"] \
            or file_digest(src) != expected["blake2b"]:
        raise MaintainError(f"{src}: does not match its manifest (size or checksum); "
                            "the backup is damaged, nothing was changed")
    staging = data_dir / ".restore"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with watch_size(staging / "data.mdb", expected["bytes"], progress, "staging"):
        shutil.copyfile(src, staging / "data.mdb")
    fsync_path(staging / "data.mdb")
    with open_copy(staging) as copy:
        checked = verify(copy, None)
    digests = _state_digests(checked)
    if digests != manifest.get("state_digests", digests):
        checked.problems.append("restored state digests differ from the backup's manifest")
    if not checked.ok:
        shutil.rmtree(staging, ignore_errors=True)
        result.problems.extend(f"staged restore: {p}" for p in checked.problems)
        return result
    current = data_dir / "data.mdb"
    kept = None
    if current.exists():
        kept = data_dir / time.strftime("pre-restore-%Y%m%dT%H%M%SZ.mdb", time.gmtime())
        os.replace(current, kept)
    with contextlib.suppress(FileNotFoundError):
        (data_dir / "lock.mdb").unlink()
    os.replace(staging / "data.mdb", current)
    shutil.rmtree(staging, ignore_errors=True)
    fsync_path(data_dir)
    result.summary = f"restored {source} into {data_dir}" + (
        f"; the replaced store is kept as {kept.name}" if kept else "")
    result.details = {"source": str(source), "kept": str(kept) if kept else None,
                      "state_digests": digests}
    return result


def compact_offline(data_dir: Path, progress: Progress | None = None) -> TaskResult:
    """Compacting copy then atomic swap, with no runtime running (caller holds the lock)."""
    result = TaskResult("compact")
    current = data_dir / "data.mdb"
    if not current.exists():
        result.summary = "nothing to compact (no store yet)"
        return result
    before = current.stat().st_size
    staging = data_dir / ".compact"
    shutil.rmtree(staging, ignore_errors=True)
    started = time.perf_counter()
    with open_copy(data_dir, cleanup=False) as store, \
            watch_size(staging / "data.mdb", before, progress, "compacting"):
        copied = time.perf_counter()
        copy = store.copy_to(staging, compact=True)
        copied = time.perf_counter() - copied
    fsync_path(copy)
    swapping = time.perf_counter()
    os.replace(copy, current)  # frees the old file's blocks: on ext4 ~0.2 s per GB
    shutil.rmtree(staging, ignore_errors=True)
    fsync_path(data_dir)
    swapped = time.perf_counter()
    after = current.stat().st_size
    result.summary = f"compacted {before} -> {after} bytes"
    result.details = {"bytes_before": before, "bytes_after": after, "online": False,
                      "copy_s": copied, "swap_s": swapped - swapping,
                      "total_s": swapped - started}
    return result
