"""Every maintenance task, offline, on real data, through the real CLI."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
import trio

from runtime.config import load_config
from runtime.events import STREAM as EVENTS
from runtime.maintain.archive import archive_events, archives, read_archive
from runtime.store import open_store
from runtime.store.lock import DataDirLock
from tests.maintain.conftest import DAY, digests, maintain


def report(result) -> dict:
    assert result.stdout, result.stderr
    return {t["task"]: t for t in json.loads(result.stdout)["tasks"]}


def test_routine_run_is_silent_on_success_and_keeps_state(populated: Path) -> None:
    data_dir = load_config(populated).data_dir
    before = trio.run(digests, data_dir)
    result = maintain(populated)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    assert trio.run(digests, data_dir) == before
    verbose = maintain(populated, "checkpoint", "--verbose")
    assert verbose.returncode == 0 and "checkpoint:" in verbose.stdout


def test_checkpoint_then_prune_shrinks_the_wal_not_the_state(populated: Path) -> None:
    data_dir = load_config(populated).data_dir
    before = trio.run(digests, data_dir)
    out = report(maintain(populated, "checkpoint", "prune", "--json"))
    assert out["checkpoint"]["details"]["checkpointed"] == 3
    assert trio.run(digests, data_dir) == before

    async def wal_sizes() -> dict[str, int]:
        async with open_store(data_dir) as store:
            return {s: len(store.read(s)) for s in store.streams() if s.startswith("agent/")}
    # Two checkpoints are retained; the WAL before the older one is gone.
    assert all(n < 300 for n in trio.run(wal_sizes).values())


def test_archive_moves_old_events_into_verified_files(populated: Path) -> None:
    config = load_config(populated)
    out = report(maintain(populated, "archive", "--json"))
    assert out["archive"]["details"]["archived_events"] == 500
    files = list(archives(config.maintain.archive_dir))
    assert files
    archived = [rec for f in files for _, rec in read_archive(f)]
    assert [rec[3]["i"] for rec in archived] == list(range(500))

    async def remaining() -> list:
        async with open_store(config.data_dir) as store:
            return [rec[1] for _, rec in store.read(EVENTS)]
    assert set(trio.run(remaining)) == {"new"}
    assert maintain(populated, "verify").returncode == 0


async def test_expired_archives_are_deleted(tmp_path: Path) -> None:
    async with open_store(tmp_path / "data") as store:
        await store.append_many(EVENTS, [[1000.0 + i, "e", None, {}] for i in range(10)])
        first = await archive_events(store, tmp_path / "arch", 1, keep_days=365,
                                     now=1000.0 + 2 * DAY)
        assert first.details["archived_events"] == 10
        assert len(list(archives(tmp_path / "arch"))) == 1
        later = await archive_events(store, tmp_path / "arch", 1, keep_days=365,
                                     now=1000.0 + 400 * DAY)
        assert later.details["expired_removed"] == 1
        assert list(archives(tmp_path / "arch")) == []


def corrupt_newest_checkpoint(data_dir: Path, stream: str) -> int:
    env = lmdb.open(str(data_dir), max_dbs=8)
    db = env.open_db(b"checkpoints")
    prefix = stream.encode() + b"\0"
    with env.begin(write=True, db=db) as txn:
        keys = [k for k in txn.cursor().iternext(values=False) if k.startswith(prefix)]
        key = keys[-1]
        blob = bytearray(txn.get(key))
        blob[-5] ^= 0xFF  # one byte inside the compressed body
        txn.put(key, bytes(blob))
    env.close()
    return int.from_bytes(key[-8:], "big")


def test_one_corrupted_checkpoint_byte_fails_verify_and_names_it(populated: Path) -> None:
    data_dir = load_config(populated).data_dir
    assert maintain(populated, "checkpoint").returncode == 0
    seq = corrupt_newest_checkpoint(data_dir, "agent/agent1/state")
    result = maintain(populated, "verify")
    assert result.returncode == 1
    assert "agent/agent1/state" in result.stderr
    assert f"checkpoint at seq {seq}" in result.stderr
    assert "checksum" in result.stderr


def test_backup_then_restore_gives_the_same_digest(populated: Path, tmp_path: Path) -> None:
    data_dir = load_config(populated).data_dir
    at_backup = trio.run(digests, data_dir)
    out = report(maintain(populated, "backup", str(tmp_path / "backups"), "--json"))
    backup_dir = Path(out["backup"]["details"]["path"])
    assert (backup_dir / "manifest.json").is_file()

    async def change() -> None:
        async with open_store(data_dir) as store:
            from runtime.store import KeyValueState
            state = await KeyValueState.load(store, "agent/agent0/state")
            await state.set("after_backup", True)
    trio.run(change)
    assert trio.run(digests, data_dir) != at_backup

    restored = maintain(populated, "restore", str(backup_dir))
    assert restored.returncode == 0, restored.stderr
    assert trio.run(digests, data_dir) == at_backup
    assert list(data_dir.glob("pre-restore-*.mdb"))  # the replaced store is kept


def test_restore_refuses_a_damaged_backup_and_changes_nothing(populated: Path,
                                                              tmp_path: Path) -> None:
    data_dir = load_config(populated).data_dir
    out = report(maintain(populated, "backup", str(tmp_path / "b"), "--json"))
    backup = Path(out["backup"]["details"]["path"])
    with open(backup / "data.mdb", "r+b") as f:
        f.seek(9000)
        f.write(b"\xff\xff")
    before = trio.run(digests, data_dir)
    result = maintain(populated, "restore", str(backup))
    assert result.returncode == 1
    assert "does not match its manifest" in result.stderr
    assert trio.run(digests, data_dir) == before


def test_compact_offline_shrinks_after_pruning(populated: Path) -> None:
    data_dir = load_config(populated).data_dir
    assert maintain(populated, "checkpoint", "archive", "prune").returncode == 0
    before = trio.run(digests, data_dir)
    out = report(maintain(populated, "compact", "--json"))
    details = out["compact"]["details"]
    assert details["bytes_after"] < details["bytes_before"]
    assert trio.run(digests, data_dir) == before
    assert maintain(populated, "verify").returncode == 0


def test_a_held_lock_exits_75_without_waiting(populated: Path) -> None:
    with DataDirLock(load_config(populated).data_dir):  # what a concurrent run holds
        result = maintain(populated, "verify")
    assert result.returncode == 75
    assert "not waiting" in result.stderr


def test_disk_budget_triggers_early_archiving(populated: Path) -> None:
    text = populated.read_text().replace('[maintain]\n', '[maintain]\ndisk_budget = "64KiB"\n'
                                         'disk_critical_factor = 1000\n')
    populated.write_text(text)
    out = report(maintain(populated, "disk", "--json"))
    details = out["disk"]["details"]
    assert details["before"]["level"] == "over"
    archived = [int(m.group(1)) for a in details["actions"]
                if (m := re.search(r"archived (\d+) event", a))]
    # Every event (all 550, plus the over-budget event itself if already stored) goes early,
    # though none is older than archive_after_days (7) except the 500 old ones.
    assert archived and archived[0] >= 550
    assert list(archives(load_config(populated).maintain.archive_dir))


def test_unknown_task_is_a_usage_error(populated: Path) -> None:
    result = maintain(populated, "defrag")
    assert result.returncode == 2
    assert "unknown maintenance task 'defrag'" in result.stderr


def test_two_real_runs_at_once_one_exits_75(populated: Path) -> None:
    """A real first run is frozen (SIGSTOP) while it holds the lock; the second run must
    give up at once with 75, and the first completes normally once resumed."""
    lock_file = load_config(populated).data_dir / "outpost.lock"
    for _attempt in range(10):
        first = subprocess.Popen(
            [sys.executable, "-m", "runtime", "maintain", "verify", "checkpoint", "verify",
             "--config", str(populated)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        caught = False
        while first.poll() is None:
            if lock_file.read_text().strip() == str(first.pid):
                first.send_signal(signal.SIGSTOP)
                caught = True
                break
        if caught:
            break
        first.wait()
    else:
        pytest.fail("never caught the first run holding the lock")
    try:
        second = maintain(populated, "verify")
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 75
    assert f"pid {first.pid}" in second.stderr
    assert first.wait(timeout=120) == 0
