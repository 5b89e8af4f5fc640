"""Random key-value state ops and how to run them: shared by the kvstate and
checkpoint tests."""

from __future__ import annotations

import random

from runtime.store import KeyValueState
from runtime.store.kvstate import apply_op


def random_ops(rng: random.Random, count: int) -> list[tuple[str, str, object]]:
    keys = [f"k{i}" for i in range(25)]
    ops: list[tuple[str, str, object]] = []
    for _ in range(count):
        kind = rng.choice(("set", "set", "incr", "incr", "merge", "del"))
        key = rng.choice(keys)
        if kind == "set":
            arg = rng.choice([rng.randrange(-5, 5), "text", [1, 2], {"a": 1}, None, 2.5, True])
        elif kind == "incr":
            arg = rng.choice([1, 2, -3, 0.25])
        elif kind == "merge":
            arg = {rng.choice("abc"): rng.randrange(100)}
        else:
            arg = None
        ops.append((kind, key, arg))
    return ops


async def run_op(state: KeyValueState, op: tuple[str, str, object]) -> None:
    kind, key, arg = op
    if kind == "set":
        await state.set(key, arg)
    elif kind == "del":
        await state.delete(key)
    elif kind == "incr":
        current = state.get(key, 0)
        if isinstance(current, bool) or not isinstance(current, int | float):
            await state.set(key, 0)  # incr refuses non-numbers; keep the model total
        await state.incr(key, arg)
    else:
        await state.merge(key, arg)


def full_replay(store, stream: str) -> tuple[dict, int]:
    data: dict = {}
    last = store.replay(stream, 1, lambda seq, op: apply_op(data, op))
    return data, last
