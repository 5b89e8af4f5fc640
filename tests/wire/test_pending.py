"""Reply slots: answers reach their waiters, and a connection's end reaches all of them."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from runtime.wire.pending import Pending


class Gone(Exception):
    pass


async def test_an_answer_wakes_its_waiter_even_if_it_came_before_the_wait() -> None:
    pending: Pending[int, str] = Pending()
    with pending.expect(1) as slot:
        assert 1 in pending
        assert pending.resolve(1, "early")  # e.g. answered while the request was being sent
        assert await slot.wait() == "early"
    assert len(pending) == 0
    async with trio.open_nursery() as nursery:
        got = []

        async def waiter(key: int) -> None:
            with pending.expect(key) as slot:
                got.append((key, await slot.wait()))
        for key in (2, 3):
            nursery.start_soon(waiter, key)
        await trio.testing.wait_all_tasks_blocked()
        assert pending.resolve(3, "c") and pending.resolve(2, "b")
    assert sorted(got) == [(2, "b"), (3, "c")]


async def test_fail_all_wakes_every_waiter_and_every_later_one() -> None:
    pending: Pending[int, str] = Pending()
    errors: list[BaseException] = []

    async def waiter(key: int) -> None:
        with pytest.raises(Gone) as info, pending.expect(key) as slot:
            await slot.wait()
        errors.append(info.value)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for key in range(5):
                nursery.start_soon(waiter, key)
            await trio.testing.wait_all_tasks_blocked()
            pending.fail_all(lambda: Gone("the peer is gone"))
    assert len(errors) == 5 and len({id(e) for e in errors}) == 5  # one fresh error each
    assert pending.failed and len(pending) == 0
    with pytest.raises(Gone), pending.expect(9):
        pass  # refused on entry: nobody may start waiting on a dead connection
    assert not pending.resolve(1, "late")


async def test_a_cancelled_waiter_gives_its_slot_back() -> None:
    pending: Pending[int, str] = Pending()
    with trio.move_on_after(0.01), pending.expect(1) as slot:
        await slot.wait()
    assert 1 not in pending
    assert not pending.resolve(1, "too late")  # dropped, nobody hangs on to it
    with pending.expect(1) as slot:  # the id may be awaited again
        pending.resolve(1, "now")
        assert await slot.wait() == "now"


async def test_one_waiter_per_key() -> None:
    pending: Pending[int, str] = Pending()
    with pending.expect(1), pytest.raises(ValueError, match="already awaited"), pending.expect(1):
        pass
    assert 1 not in pending


async def test_a_reader_whose_peer_closes_fails_every_waiter() -> None:
    """The driver pattern over a real socketpair: the reader's end fails all slots."""
    ours, theirs = socket.socketpair()
    pending: Pending[int, bytes] = Pending()
    sock = trio.socket.from_stdlib_socket(ours)
    woken = []
    answered = trio.Event()

    async def reader() -> None:
        try:
            while data := await sock.recv(100):
                pending.resolve(data[0], data)
        finally:
            pending.fail_all(lambda: Gone("the peer closed"))

    async def waiter(key: int) -> None:
        try:
            with pending.expect(key) as slot:
                woken.append(await slot.wait())
                answered.set()
        except Gone as exc:
            woken.append(exc)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for key in (1, 2, 3):
                nursery.start_soon(waiter, key)
            await trio.testing.wait_all_tasks_blocked()
            theirs.send(bytes([2]))
            await answered.wait()
            theirs.close()
    sock.close()
    assert woken[0] == b"\x02"
    assert [type(w) for w in woken[1:]] == [Gone, Gone]
