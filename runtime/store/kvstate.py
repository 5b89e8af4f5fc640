"""Key-value state on top of a stream: ops in the WAL, materialised in memory.

Each write is an op record `[op, key, arg]` appended to the stream (set,
delete, incr, merge). The in-memory dict is updated by the store's
`on_durable` callback, in commit order, so what a reader sees is exactly the
durable prefix of the log. Materialised state = newest good checkpoint + replay
of the ops after it. Checkpoints are taken off the hot path by `StateBook.run`.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import trio

from runtime.store import codec
from runtime.store.errors import StoreError
from runtime.store.store import Store

log = logging.getLogger("outpost.store")

SET, DELETE, INCR, MERGE = "set", "del", "incr", "merge"


class StateError(StoreError):
    """An operation does not fit the current value (e.g. incr on a string)."""


def apply_op(data: dict, op: list) -> Any:
    """Apply one op record to `data` in place; returns the key's new value.

    Total and deterministic, so replaying a log always gives the same state.
    """
    try:
        kind, key, arg = op
    except (TypeError, ValueError):
        raise StoreError(f"not a state op record: {op!r:.200}") from None
    if kind == SET:
        data[key] = arg
    elif kind == DELETE:
        data.pop(key, None)
    elif kind == INCR:
        current = data.get(key, 0)
        if not isinstance(current, int | float) or isinstance(current, bool):
            current = 0
        data[key] = current + arg
    elif kind == MERGE:
        current = data.get(key)
        merged = dict(current) if isinstance(current, dict) else {}
        merged.update(arg)
        data[key] = merged
    else:
        raise StoreError(f"unknown state op {kind!r}")
    return data.get(key)


def _paused_gc(fn: Any, *args: Any) -> Any:
    """Run `fn` with the cyclic GC paused: rebuilding state allocates millions of
    acyclic objects, and repeated full collections over them cost ~10% of a
    recovery. Re-enabled at once afterwards (only if it was on)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        return fn(*args)
    finally:
        if was_on:
            gc.enable()


def apply_ops(data: dict, ops: list, stream: str = "?", first_seq: int = 0) -> None:
    """Apply a run of op records in order (recovery's hot loop: `set` inlined).

    On a bad record the caller discards `data`; the error names the record's seq.
    """
    try:
        for kind, key, arg in ops:
            if kind == SET:
                data[key] = arg
            else:
                apply_op(data, [kind, key, arg])
    except (StoreError, TypeError, ValueError, AttributeError) as exc:
        at = _first_bad(ops)
        raise StoreError(f"stream {stream!r} seq {first_seq + at}: cannot replay "
                         f"{ops[at]!r:.200}: {exc}") from None


def _first_bad(ops: list) -> int:
    """Index of the first op record that cannot be applied (for the error message)."""
    scratch: dict = {}
    for i, op in enumerate(ops):
        try:
            apply_op(scratch, op)
        except (StoreError, TypeError, ValueError, AttributeError):
            return i
        scratch.clear()
    return 0


def digest_of(data: Mapping) -> str:
    """A stable digest of a state dict (for recovery checks)."""
    packed = codec.pack(sorted(data.items(), key=lambda kv: codec.pack(kv[0])),
                        limit=codec.MAX_CHECKPOINT_BYTES)
    return hashlib.blake2b(packed, digest_size=16).hexdigest()


class KeyValueState(Mapping):
    """One stream's materialised key-value state. Reads are local; writes await the ack."""

    def __init__(self, store: Store, stream: str, data: dict, applied_seq: int,
                 checkpoint_seq: int) -> None:
        self.store = store
        self.stream = stream
        self._data = data
        self.applied_seq = applied_seq
        self.checkpoint_seq = checkpoint_seq
        self.on_dirty: Any = None  # called when ops since the last checkpoint pile up

    @classmethod
    async def load(cls, store: Store, stream: str) -> KeyValueState:
        """Newest verified checkpoint + replay of every op after it.

        Bad checkpoints are quarantined by the store and an older one is used
        with a longer replay. StoreError (and no state) if what is left cannot
        rebuild the stream exactly: a WAL gap, or a WAL that ends before the
        stream's last committed seq. Unverified state is never loaded.
        """
        data: dict = {}
        covered = 0
        last = store.last_seq(stream)
        found = await store.load_checkpoint(stream)
        if found is not None:
            covered, payload = found
            data = await trio.to_thread.run_sync(_paused_gc, codec.unpack, payload,
                                                 codec.MAX_CHECKPOINT_BYTES)
            if not isinstance(data, dict):
                raise StoreError(f"checkpoint of {stream!r} at seq {covered} is not a map")

        def replay(first: int, ops: list) -> None:
            apply_ops(data, ops, stream, first)

        applied = await trio.to_thread.run_sync(_paused_gc, store.replay_chunks, stream,
                                                covered + 1, replay)
        if applied < last:
            raise StoreError(
                f"stream {stream!r}: state rebuilt only up to seq {applied} but the stream "
                f"reached seq {last}; the records after {applied} are gone and no verified "
                "checkpoint covers them (see the quarantine; restore from a backup)")
        log.info("state %r recovered: checkpoint at seq %d + %d replayed op(s), now at seq %d",
                 stream, covered, applied - covered, applied)
        return cls(store, stream, data, applied, covered)

    # -- reads ---------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def to_dict(self) -> dict:
        """A copy of the whole state."""
        return dict(self._data)

    def digest(self) -> str:
        return digest_of(self._data)

    @property
    def ops_since_checkpoint(self) -> int:
        return self.applied_seq - self.checkpoint_seq

    # -- writes (each returns after the durable ack) ------------------------------

    async def _write(self, op: list) -> Any:
        result: list = []

        def on_durable(seq: int) -> None:
            result.append(apply_op(self._data, op))
            self.applied_seq = seq
            if self.on_dirty is not None:
                self.on_dirty(self)

        await self.store.append(self.stream, op, on_durable)
        return result[0]

    async def set(self, key: str, value: Any) -> None:
        """Set `key` to `value` (any msgpack-able data)."""
        await self._write([SET, _key(key), value])

    async def delete(self, key: str) -> None:
        await self._write([DELETE, _key(key), None])

    async def incr(self, key: str, by: int | float = 1) -> int | float:
        """Add `by` to the number at `key` (missing = 0); returns the new value."""
        if not isinstance(by, int | float) or isinstance(by, bool) or \
                (isinstance(by, float) and not math.isfinite(by)):
            raise StateError(f"incr of {key!r}: `by` must be a finite number, got {by!r}")
        current = self._data.get(key, 0)
        if not isinstance(current, int | float) or isinstance(current, bool):
            raise StateError(f"incr of {key!r}: current value {current!r} is not a number")
        return await self._write([INCR, _key(key), by])

    async def merge(self, key: str, fields: Mapping[str, Any]) -> dict:
        """Shallow-merge `fields` into the map at `key` (missing = {}); returns it."""
        if not isinstance(fields, Mapping):
            raise StateError(f"merge into {key!r}: expected a mapping, got {type(fields).__name__}")
        return await self._write([MERGE, _key(key), dict(fields)])

    async def checkpoint(self, keep_tail: int = 0) -> int:
        """Checkpoint the state as of now; returns the seq it covers.

        The payload is packed here, in one step with reading `applied_seq`, so it
        is exactly the state at that seq; compression and the write happen off
        the event loop. The store prunes the WAL that retention no longer needs.
        """
        seq = self.applied_seq
        if seq == 0 or seq <= self.checkpoint_seq:
            return self.checkpoint_seq
        payload = codec.pack(self._data, codec.MAX_CHECKPOINT_BYTES)
        await self.store.write_checkpoint(self.stream, seq, payload, keep_tail)
        self.checkpoint_seq = max(self.checkpoint_seq, seq)
        return seq


def _key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise StateError(f"state keys are non-empty strings, got {key!r}")
    return key


class StateBook:
    """Every open KeyValueState of a store, and the task that checkpoints them.

    A state is checkpointed when `every_ops` ops piled up since its last
    checkpoint, or every `every_s` seconds if it changed at all.
    """

    def __init__(self, store: Store, every_ops: int = 1000, every_s: float = 60.0,
                 keep_tail: int = 0) -> None:
        self.store = store
        self.every_ops = every_ops
        self.every_s = every_s
        self.keep_tail = keep_tail
        self.checkpoints_written = 0
        self._states: dict[str, KeyValueState] = {}
        self._loading = trio.Lock()
        self._due = trio.Event()

    async def open(self, stream: str) -> KeyValueState:
        """The state of `stream`, loaded once and shared afterwards."""
        state = self._states.get(stream)
        if state is None:
            async with self._loading:  # two openers of one stream must share one load
                state = self._states.get(stream)
                if state is None:
                    state = await KeyValueState.load(self.store, stream)
                    state.on_dirty = self._note_dirty
                    self._states[stream] = state
        return state

    def _note_dirty(self, state: KeyValueState) -> None:
        if state.ops_since_checkpoint >= self.every_ops:
            self._due.set()

    async def checkpoint_all(self, only_due: bool = False) -> int:
        """Checkpoint every state that changed (or, with `only_due`, that reached
        `every_ops`); returns how many were written."""
        written = 0
        for state in list(self._states.values()):
            pending = state.ops_since_checkpoint
            if pending > 0 and (not only_due or pending >= self.every_ops):
                try:
                    await state.checkpoint(self.keep_tail)
                    written += 1
                except StoreError as exc:
                    log.error("checkpoint of %r failed: %s", state.stream, exc)
        self.checkpoints_written += written
        return written

    async def run(self) -> None:
        """Checkpoint in the background until cancelled: a state is checkpointed
        once it has `every_ops` new ops, and every `every_s` seconds if it changed
        at all. Writers never wait for this (off the hot path)."""
        deadline = trio.current_time() + self.every_s
        while True:
            with trio.move_on_at(deadline):
                await self._due.wait()
            self._due = trio.Event()
            timed_out = trio.current_time() >= deadline
            await self.checkpoint_all(only_due=not timed_out)
            if timed_out:
                deadline = trio.current_time() + self.every_s
                # Also the periodic moment to clear reader slots of dead processes.
                with contextlib.suppress(StoreError):
                    self.store.reader_check()
