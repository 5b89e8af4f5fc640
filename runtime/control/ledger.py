"""Request ids that were applied, and their answers: durable, for at least their TTL.

One store stream, `control/requests`, of records `[request_id, ts, method,
params_digest, answer]`, appended once a request's effect is durable (see
runtime.control.mutations for the order and what a crash between the two
means). In memory only an index is kept (id -> seq, ts, method, digest); an
answer is read back from the store on the rare repeat. The stream is a plain
log in time order, so pruning ids older than the TTL is deleting a prefix
(maintenance's `prune` does it, online and offline, through `prune`).

The store knows nothing of requests: this module names the stream.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import trio

from runtime.store import Store, StoreError, codec

log = logging.getLogger("outpost.control")

STREAM = "control/requests"
DEFAULT_TTL_S = 24 * 3600.0


@dataclass(frozen=True)
class Applied:
    """One remembered request: where its record is, when, what it was."""

    seq: int
    ts: float
    method: str
    digest: str


def _canonical(value: Any) -> Any:
    """`value` with every map's items in a fixed order, so equal params digest equally."""
    if isinstance(value, dict):
        return [[k, _canonical(v)] for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))]
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def params_digest(method: str, params: dict[str, Any]) -> str:
    """A digest of what a request asks for: the method and its params, without the
    request id and wait (a retry may wait where the first try did not)."""
    asked = {k: v for k, v in params.items() if k not in ("request_id", "wait")}
    packed = codec.pack([method, _canonical(asked)], codec.MAX_RECORD_BYTES)
    return hashlib.blake2b(packed, digest_size=16).hexdigest()


class RequestLedger:
    """The applied request ids of one store (load it with `await RequestLedger.load(store)`)."""

    def __init__(self, store: Store, index: dict[str, Applied]) -> None:
        self.store = store
        self._index = index  # in seq order (appended in commit order)

    @classmethod
    async def load(cls, store: Store) -> RequestLedger:
        """Read the index of every remembered request from the stream (in a thread)."""
        index: dict[str, Applied] = {}

        def scan() -> None:
            first = store.first_seq(STREAM)
            if first == 0:
                return

            def each(seq: int, record: Any) -> None:
                try:
                    rid, ts, method, digest, _ = record
                except (TypeError, ValueError):
                    log.error("request ledger: record %d is not a request record; skipped", seq)
                    return
                index[rid] = Applied(seq, float(ts), method, digest)
            store.replay(STREAM, first, each)
        await trio.to_thread.run_sync(scan)
        return cls(store, index)

    def __len__(self) -> int:
        return len(self._index)

    def get(self, request_id: str) -> Applied | None:
        """The remembered request with this id, or None."""
        return self._index.get(request_id)

    def answer(self, applied: Applied) -> Any:
        """The first answer to a remembered request (read from the store)."""
        found = self.store.read(STREAM, applied.seq, limit=1)
        if not found or found[0][0] != applied.seq:
            raise StoreError(f"request ledger: record {applied.seq} is gone")
        return found[0][1][4]

    async def record(self, request_id: str, method: str, digest: str, answer: Any) -> None:
        """Remember a request as applied, with its answer; returns once durable."""
        ts = time.time()
        seq = await self.store.append(STREAM, [request_id, ts, method, digest, answer])
        self._index[request_id] = Applied(seq, ts, method, digest)

    async def prune(self, ttl_s: float, now: float | None = None) -> int:
        """Forget requests recorded more than `ttl_s` ago; returns how many.

        Records are in time order, so this deletes a prefix of the stream (a
        clock stepped backwards only delays pruning, never loses a newer id).
        """
        cutoff = (time.time() if now is None else now) - ttl_s
        expired = []
        for rid, applied in self._index.items():
            if applied.ts >= cutoff:
                break
            expired.append((rid, applied.seq))
        if not expired:
            return 0
        await self.store.prune(STREAM, expired[-1][1], uncovered=True)
        for rid, _ in expired:
            del self._index[rid]
        return len(expired)
