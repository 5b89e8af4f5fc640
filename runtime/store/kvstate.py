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
from collections.abc import Awaitable, Iterator, Mapping
from typing import Any

import trio

from runtime.store import codec
from runtime.store.errors import StoreError
from runtime.store.store import Store, stream_key
from runtime.store.writer import WriteOp

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
        self.prefix = stream_key(stream)
        # on_dirty(state) is called (in commit order) once `dirty_after` ops piled up
        # since the last checkpoint, and after every further op until one is taken.
        self.on_dirty: Any = None
        self.dirty_after = 1

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
    #
    # set/delete/incr/merge return the coroutine of `write` instead of being
    # coroutines themselves: one frame less per write on the hottest path.

    def set(self, key: str, value: Any) -> Awaitable[None]:
        """Set `key` to `value` (any msgpack-able data); await it: returns once durable."""
        return self.write(SET, key, value)

    def delete(self, key: str) -> Awaitable[None]:
        """Remove `key` (a no-op if missing); await it: returns once durable."""
        return self.write(DELETE, key, None)

    def incr(self, key: str, by: int | float = 1) -> Awaitable[int | float]:
        """Add `by` to the number at `key` (missing = 0); await it for the new value."""
        return self.write(INCR, key, by)

    def merge(self, key: str, fields: Mapping[str, Any]) -> Awaitable[dict]:
        """Shallow-merge `fields` into the map at `key` (missing = {}); await it for the map."""
        return self.write(MERGE, key, fields)

    async def write(self, kind: str, key: str, arg: Any, count: Any = None) -> Any:
        """The one write path: append the op `[kind, key, arg]` and return, once it is
        durable, what set/delete (None) or incr/merge (the new value) return.

        The op reaches the in-memory state in commit order, when it is durable;
        `count` (a shm Counter, e.g. ctx.state's writes) is bumped then too.
        StoreError (StateError for a bad argument) means nothing was stored. The
        writer packs the value when its batch is written: do not mutate it until
        this returns.
        """
        if type(key) is not str or not key or kind != SET:  # a set of a str key: no checks
            arg = self._checked(kind, key, arg)
        return await self.store.write(_StateWrite(self, [kind, key, arg], count))

    def _checked(self, kind: str, key: str, arg: Any) -> Any:
        """`arg` as the op `kind` stores it; StateError if the op cannot be applied."""
        if not isinstance(key, str) or not key:
            raise StateError(f"state keys are non-empty strings, got {key!r}")
        if kind == INCR:
            if not isinstance(arg, int | float) or isinstance(arg, bool) or \
                    (isinstance(arg, float) and not math.isfinite(arg)):
                raise StateError(f"incr of {key!r}: `by` must be a finite number, got {arg!r}")
            current = self._data.get(key, 0)
            if not isinstance(current, int | float) or isinstance(current, bool):
                raise StateError(f"incr of {key!r}: current value {current!r} is not a number")
        elif kind == MERGE:
            if not isinstance(arg, Mapping):
                raise StateError(f"merge into {key!r}: expected a mapping, got "
                                 f"{type(arg).__name__}")
            return dict(arg)
        elif kind not in (SET, DELETE):
            raise StateError(f"unknown state op {kind!r}")
        return arg

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


class _StateWrite(WriteOp):
    """A state op on its way to the log; folded into the state once durable."""

    __slots__ = ("count", "state")

    def __init__(self, state: KeyValueState, op: list, count: Any) -> None:
        # WriteOp's fields, set directly: this runs once per state write.
        self.apply = self.on_durable = self.task = self.error = self.data = self.result = None
        self.batch = 0
        self.stream = state.prefix
        self.record = op
        self.state = state
        self.count = count

    def durable(self) -> None:
        state, op, seq = self.state, self.record, self.result
        if op[0] == SET:  # most writes: apply_op's set, inlined
            state._data[op[1]] = op[2]
            self.result = None
        else:
            value = apply_op(state._data, op)
            self.result = value if op[0] != DELETE else None
        state.applied_seq = seq
        if self.count is not None:
            self.count.inc()
        if seq - state.checkpoint_seq >= state.dirty_after and state.on_dirty is not None:
            state.on_dirty(state)


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
                    state.dirty_after = self.every_ops
                    self._states[stream] = state
        return state

    def _note_dirty(self, state: KeyValueState) -> None:
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
