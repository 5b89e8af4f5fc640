"""Backups off the host: `maintain backup nats` and `maintain restore nats [--at T]`.

A backup is the same hot, compacted, verified copy as `maintain backup DIR`
(runtime.maintain.copy: LMDB copy in one read transaction, verified, with a manifest
of its size, blake2b and every state digest), packed into one object:

    b"OPBK1\\n" | manifest length (>I) | manifest JSON | zstd frame of data.mdb

and put in the JetStream Object Store bucket `<stream>_BACKUP_<host>`, named by its
UTC time, with the container's blake2b in the object's headers. The newest `keep`
are kept. A restore (offline: the caller holds the data-dir lock) takes the newest
backup not after `at`, checks the Object Store's SHA-256 (nats-py, on the way in),
the container's blake2b, then unpacks it and hands it to `copy.restore`, which
checks the manifest and the state digests before swapping the file in and keeps
the replaced one beside it.

Both are synchronous (they run asyncio themselves): call them in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import zstandard

from runtime.maintain import copy
from runtime.maintain.report import MaintainError, TaskResult
from runtime.store import Store
from runtime.uplink import subjects
from runtime.uplink.connect import connect, section_options
from runtime.uplink.outbox import mark_restored

MAGIC = b"OPBK1\n"
_LEN = struct.Struct(">I")
_MANIFEST_MAX = 16 << 20
HEADER_DIGEST = "Outpost-Blake2b"
HEADER_CREATED = "Outpost-Created"
HEADER_HOST = "Outpost-Host"
Progress = copy.Progress


def parse_at(text: str) -> float:
    """`--at`: seconds since the epoch, or an ISO 8601 time (UTC if no zone is given)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise MaintainError(f"--at {text!r}: expected seconds since the epoch or an ISO time "
                            "such as 2026-12-01T08:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def pack(backup_dir: Path, out: Path, level: int = 3) -> dict:
    """Pack a backup folder (manifest.json + data.mdb) into one container file."""
    manifest = copy.read_manifest(backup_dir)
    raw = json.dumps(manifest, sort_keys=True).encode()
    with open(out, "wb") as f:
        f.write(MAGIC + _LEN.pack(len(raw)) + raw)
        with open(backup_dir / "data.mdb", "rb") as src:
            zstandard.ZstdCompressor(level=level, write_content_size=True).copy_stream(src, f)
        f.flush()
    copy.fsync_path(out)
    return manifest


def unpack(container: Path, dest: Path) -> dict:
    """The inverse of `pack` into folder `dest`; MaintainError if it is not a container or
    the data does not decompress to the size the manifest names."""
    dest.mkdir(parents=True, exist_ok=True)
    with open(container, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise MaintainError(f"{container.name}: not an outpost backup object")
        (size,) = _LEN.unpack(f.read(_LEN.size) or b"\0\0\0\0")
        if not 0 < size <= _MANIFEST_MAX:
            raise MaintainError(f"{container.name}: manifest of {size} bytes: damaged")
        (dest / copy.MANIFEST).write_bytes(f.read(size))
        manifest = copy.read_manifest(dest)
        expected = manifest["files"]["data.mdb"]["bytes"]
        with open(dest / "data.mdb", "wb") as out:
            reader = zstandard.ZstdDecompressor().stream_reader(f)
            written = 0
            while chunk := reader.read(1 << 20):
                written += len(chunk)
                if written > expected:
                    raise MaintainError(f"{container.name}: data larger than its manifest says")
                out.write(chunk)
        if written != expected:
            raise MaintainError(f"{container.name}: data of {written} bytes, manifest says "
                                f"{expected}")
    return manifest


async def _object_store(cfg: Any, host: str, create: bool) -> tuple[Any, Any]:
    nc = await connect(section_options(cfg, name=f"outpost-backup-{host}", reconnect=True))
    js = nc.jetstream(timeout=60)
    bucket = subjects.backup_bucket(cfg.stream, host)
    try:
        store = await js.object_store(bucket)
    except Exception:
        if not create:
            await nc.close()
            raise MaintainError(f"no backups of host {host!r} on the server (no bucket "
                                f"{bucket})") from None
        store = await js.create_object_store(bucket, description=f"outpost backups of {host}")
    return nc, store


async def _listing(store: Any) -> list[Any]:
    from nats.js.errors import NotFoundError

    try:
        infos = await store.list(ignore_deletes=True)
    except NotFoundError:
        return []
    return sorted((i for i in infos if not i.deleted),
                  key=lambda i: float((i.headers or {}).get(HEADER_CREATED, 0)))


def backup_nats(store: Store, cfg: Any, keep: int | None = None,
                progress: Progress | None = None) -> TaskResult:
    """Back `store` up into its host's Object Store bucket; keep the newest `keep`."""
    keep = keep or cfg.backup.keep
    result = TaskResult("backup nats")
    with tempfile.TemporaryDirectory(prefix=".backup-nats-", dir=store.path.parent) as tmp:
        local = copy.backup(store, Path(tmp), progress)
        if not local.ok:
            return local
        folder = Path(local.details["path"])
        container = Path(tmp) / "backup.opbk"
        manifest = pack(folder, container)
        digest = copy.file_digest(container)
        created = manifest["created"]
        # Millisecond names: two backups in one second must not replace each other.
        name = time.strftime("outpost-backup-%Y%m%dT%H%M%S", time.gmtime(created)) + \
            f".{int(created * 1000) % 1000:03d}Z"
        headers = {HEADER_DIGEST: digest, HEADER_CREATED: repr(created),
                   HEADER_HOST: cfg.host_id}

        async def upload() -> tuple[Any, list[str]]:
            from nats.js.api import ObjectMeta

            nc, obj = await _object_store(cfg, cfg.host_id, create=True)
            try:
                taken = {i.name for i in await _listing(obj)}
                unique, n = name, 1
                while unique in taken:
                    n += 1
                    unique = f"{name}-{n}"
                with open(container, "rb") as f:
                    info = await obj.put(unique, f, meta=ObjectMeta(name=unique,
                                                                    headers=headers))
                removed = []
                listing = await _listing(obj)
                for old in listing[:-keep]:
                    await obj.delete(old.name)
                    removed.append(old.name)
                return info, removed
            finally:
                await nc.close()

        info, removed = asyncio.run(upload())
        name = info.name
    bucket = subjects.backup_bucket(cfg.stream, cfg.host_id)
    result.summary = (f"backup {name} ({info.size} bytes, zstd) put in {bucket}"
                      + (f"; removed {len(removed)} older" if removed else ""))
    result.details = {"bucket": bucket, "name": name, "bytes": info.size, "blake2b": digest,
                      "created": created, "removed": removed,
                      "state_digests": manifest.get("state_digests", {})}
    return result


def list_backups(cfg: Any, host: str | None = None) -> list[dict[str, Any]]:
    """The backups of `host` (default this one) on the server, oldest first."""
    async def go() -> list[dict[str, Any]]:
        nc, obj = await _object_store(cfg, host or cfg.host_id, create=False)
        try:
            return [{"name": i.name, "bytes": i.size, "created":
                     float((i.headers or {}).get(HEADER_CREATED, 0))}
                    for i in await _listing(obj)]
        finally:
            await nc.close()
    return asyncio.run(go())


def restore_nats(data_dir: Path, cfg: Any, at: float | None = None, host: str | None = None,
                 progress: Progress | None = None) -> TaskResult:
    """Restore the newest backup of `host` (default this one) made at or before `at`
    into `data_dir`. Offline only: the caller holds the data-dir lock."""
    host = host or cfg.host_id
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = data_dir / ".restore-nats"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        container = staging / "backup.opbk"

        async def download() -> Any:
            from nats.js.errors import DigestMismatchError

            nc, obj = await _object_store(cfg, host, create=False)
            try:
                listing = [i for i in await _listing(obj)
                           if at is None or float(i.headers.get(HEADER_CREATED, 0)) <= at]
                if not listing:
                    when = "" if at is None else f" made at or before {at}"
                    raise MaintainError(f"no backup of host {host!r}{when} on the server")
                chosen = listing[-1]
                with open(container, "wb") as f:
                    try:
                        await obj.get(chosen.name, writeinto=f)
                    except DigestMismatchError:
                        raise MaintainError(f"backup {chosen.name}: its SHA-256 does not match "
                                            "the Object Store's digest; nothing was changed") \
                            from None
                return chosen
            finally:
                await nc.close()

        chosen = asyncio.run(download())
        want = (chosen.headers or {}).get(HEADER_DIGEST)
        if want != copy.file_digest(container):
            raise MaintainError(f"backup {chosen.name}: blake2b does not match its header; "
                                "the object is damaged, nothing was changed")
        folder = staging / chosen.name
        unpack(container, folder)
        container.unlink()
        result = copy.restore(data_dir, folder, progress)
        if result.ok:
            mark_restored(data_dir)
        result.task = "restore nats"
        result.details.update({"bucket": subjects.backup_bucket(cfg.stream, host),
                               "name": chosen.name, "host": host,
                               "created": float(chosen.headers.get(HEADER_CREATED, 0))})
        if result.ok:
            result.summary = f"restored {chosen.name} of {host} from NATS: " + result.summary
        return result
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
