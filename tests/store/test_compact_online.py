"""Online compaction while writers keep writing: nothing acknowledged is lost."""

from __future__ import annotations

from pathlib import Path

import trio

from runtime.store import open_store


async def test_compaction_under_concurrent_writes_loses_nothing_acknowledged(
        tmp_path: Path) -> None:
    acked: dict[str, dict[int, int]] = {f"s{w}": {} for w in range(8)}
    sizes = []
    async with open_store(tmp_path) as store:
        # Garbage for compaction to drop: a big log, mostly pruned.
        await store.append_many("junk", [{"pad": "x" * 2000} for _ in range(3000)])
        await store.prune("junk", 2990, uncovered=True)

        async def writer(stream: str, done: trio.Event) -> None:
            i = 0
            while not done.is_set():
                seq = await store.append(stream, {"i": i})
                acked[stream][seq] = i
                i += 1

        done = trio.Event()
        async with trio.open_nursery() as nursery:
            for stream in acked:
                nursery.start_soon(writer, stream, done)
            for _ in range(5):
                # Let writes pile up between compactions (a condition, not a sleep).
                target = sum(map(len, acked.values())) + 200
                while sum(map(len, acked.values())) < target:
                    await trio.sleep(0)
                result = await store.compact_online()
                sizes.append((result["bytes_before"], result["bytes_after"]))
            done.set()

        def check() -> None:
            for stream, seqs in acked.items():
                stored = dict(store.read(stream))
                assert len(seqs) > 100
                for seq, i in seqs.items():
                    assert stored[seq] == {"i": i}, (stream, seq)
                assert sorted(stored) == list(range(1, len(stored) + 1))  # gap-free
        check()

    assert sizes[0][1] < sizes[0][0] / 2  # the pruned junk was dropped
    async with open_store(tmp_path) as store:  # and it all survives a reopen
        check()
