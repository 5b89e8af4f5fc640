"""The sans-IO control protocol, driven with bytes only (no sockets, no clocks)."""

from __future__ import annotations

import random
import struct

import msgpack
import pytest

from runtime.control.protocol import (
    CLIENT,
    CLOSED,
    ERROR,
    MAX_CONTAINER,
    MAX_FRAME,
    NEED_DATA,
    OPEN,
    SERVER,
    Connection,
    ErrorResponse,
    Hello,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Request,
    Response,
    StreamEnd,
    StreamItem,
    Table,
)


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def pair() -> tuple[Connection, Connection]:
    client, server = Connection(CLIENT), Connection(SERVER)
    server.receive_data(client.send(Hello()))
    assert isinstance(server.next_event(), Hello)
    client.receive_data(server.send(Hello(server="outpost test")))
    assert client.next_event() == Hello(server="outpost test")
    return client, server


def request(client: Connection, server: Connection, req: Request) -> None:
    server.receive_data(client.send(req))
    assert server.next_event() == req


def test_request_response_round_trip() -> None:
    client, server = pair()
    request(client, server, Request(7, "status", {"agent": "a"}))
    request(client, server, Request(8, "x", {}))
    request(client, server, Request(9, "events.follow", {}))
    assert client.open_requests == server.open_requests == {7, 8, 9}
    for event in (Response(7, {"ok": [1, 2]}), ErrorResponse(8, "not_found", "no"),
                  StreamItem(9, "x"), StreamItem(9, {"seq": 2}), StreamEnd(9)):
        client.receive_data(server.send(event))
        assert client.next_event() == event
    assert client.next_event() is NEED_DATA
    assert client.open_requests == server.open_requests == frozenset()


def test_frames_split_at_every_byte_boundary() -> None:
    client, server = pair()
    data = client.send(Request(1, "a", {})) + client.send(Request(2, "b", {"k": "v" * 100}))
    events = []
    for i in range(len(data)):
        server.receive_data(data[i:i + 1])
        while (event := server.next_event()) is not NEED_DATA:
            events.append(event)
    assert events == [Request(1, "a", {}), Request(2, "b", {"k": "v" * 100})]


def test_pipelined_requests_in_one_read_come_out_in_order() -> None:
    client, server = pair()
    server.receive_data(b"".join(client.send(Request(i, "status", {})) for i in range(1, 50)))
    assert [server.next_event().id for _ in range(49)] == list(range(1, 50))
    assert server.next_event() is NEED_DATA


def test_eof_between_frames_is_closed_and_inside_a_frame_is_an_error() -> None:
    client, server = pair()
    server.receive_data(b"")
    assert server.next_event() is CLOSED
    _, server = pair()
    server.receive_data(client.send(Request(1, "a", {}))[:5])
    server.receive_data(b"")
    with pytest.raises(ProtocolError, match="middle of a frame"):
        server.next_event()


def test_oversized_frame_is_refused_before_buffering_it() -> None:
    server = Connection(SERVER, max_frame=1024)
    server.receive_data(struct.pack(">I", 10_000_000) + b"x" * 10)
    with pytest.raises(ProtocolError) as info:
        server.next_event()
    assert info.value.code == "too_large"
    assert server.buffered == 14  # the header said no; the body was never awaited


def test_default_frame_limit_is_one_mib() -> None:
    assert MAX_FRAME == 1 << 20
    _, server = pair()
    server.receive_data(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(ProtocolError, match="exceeds"):
        server.next_event()


@pytest.mark.parametrize("body", [
    b"\xc1",  # never-used msgpack byte
    msgpack.packb([1, 2, 3]),
    msgpack.packb({"hello": "other", "version": 1}),
    msgpack.packb({"hello": "outpost", "version": True}),
    msgpack.packb({"id": 1, "method": "status"}),  # request before hello
])
def test_garbage_before_hello_is_a_protocol_error(body: bytes) -> None:
    server = Connection(SERVER)
    server.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError):
        server.next_event()


@pytest.mark.parametrize("msg", [
    {"id": "1", "method": "status"},
    {"id": 1},
    {"id": 1, "method": ""},
    {"id": 1, "method": 5},
    {"id": 1, "method": "status", "params": [1]},
    {"id": True, "method": "status"},
    {"id": 1.5, "method": "status"},
    [1, "status", {}],
    "status",
    None,
])
def test_malformed_requests_are_protocol_errors(msg: object) -> None:
    _, server = pair()
    server.receive_data(frame(msg))
    with pytest.raises(ProtocolError):
        server.next_event()


@pytest.mark.parametrize("body", [
    msgpack.packb({"id": 1, "method": "m", "params": {"a": list(range(MAX_CONTAINER + 1))}}),
    msgpack.packb({1: 2}),  # non-string keys
    msgpack.packb({"id": 1, "method": "m", "params": {"x": msgpack.ExtType(5, b"z")}}),
    msgpack.packb({"id": 1, "method": "m"}) + b"\x00",  # trailing bytes inside the frame
])
def test_unpack_limits_and_strictness(body: bytes) -> None:
    _, server = pair()
    server.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError):
        server.next_event()


def test_version_mismatch_is_named() -> None:
    server = Connection(SERVER)
    server.receive_data(frame({"hello": "outpost", "version": 99}))
    with pytest.raises(ProtocolError, match="version 99") as info:
        server.next_event()
    assert info.value.code == "version"


def test_client_reads_a_refusal_sent_instead_of_hello() -> None:
    client, server = Connection(CLIENT), Connection(SERVER)
    client.send(Hello())
    client.receive_data(server.send(ErrorResponse(None, "forbidden", "uid 65534 may not")))
    assert client.next_event() == ErrorResponse(None, "forbidden", "uid 65534 may not")


def test_duplicate_request_id_is_refused_on_both_sides() -> None:
    client, server = pair()
    request(client, server, Request(1, "a", {}))
    with pytest.raises(ProtocolError) as info:
        client.send(Request(1, "b", {}))
    assert info.value.code == "bad_id"
    server.receive_data(frame({"id": 1, "method": "b", "params": {}}))
    with pytest.raises(ProtocolError):
        server.next_event()


def test_answers_for_ids_that_are_not_open_are_errors() -> None:
    client, server = pair()
    with pytest.raises(ProtocolError):
        server.send(Response(5, 1))
    client, server = pair()  # (that error latched the server: see test_error_latch_*)
    request(client, server, Request(5, "a", {}))
    client.receive_data(server.send(Response(5, 1)))
    assert client.next_event() == Response(5, 1)
    client.receive_data(frame({"id": 5, "result": 2}))  # a second answer
    with pytest.raises(ProtocolError) as info:
        client.next_event()
    assert info.value.code == "bad_id"


def test_stream_item_after_the_end_is_an_error() -> None:
    client, server = pair()
    request(client, server, Request(3, "events.follow", {}))
    client.receive_data(server.send(StreamItem(3, 1)) + server.send(StreamEnd(3)))
    assert [client.next_event(), client.next_event()] == [StreamItem(3, 1), StreamEnd(3)]
    client.receive_data(frame({"id": 3, "stream": 2}))
    with pytest.raises(ProtocolError):
        client.next_event()


def test_each_side_sends_only_what_its_role_allows() -> None:
    # A fresh pair for each refusal: a refused send latches the connection.
    client, server = Connection(CLIENT), Connection(SERVER)
    with pytest.raises(ProtocolError):
        client.send(Request(1, "a", {}))  # before hello
    with pytest.raises(ProtocolError):
        server.send(Hello())  # the server answers a hello, it does not open with one
    client, server = Connection(CLIENT), Connection(SERVER)
    client.send(Hello())
    with pytest.raises(ProtocolError):
        client.send(Hello())
    client = Connection(CLIENT)
    client.send(Hello())
    with pytest.raises(ProtocolError):
        client.send(Response(1, None))
    with pytest.raises(ProtocolError):
        server.send(Request(1, "a", {}))
    server.send(ErrorResponse(None, "busy", "try again"))  # refusing is always allowed


def test_sending_an_oversized_result_is_refused_and_the_request_stays_open() -> None:
    client, server = Connection(CLIENT), Connection(SERVER, max_frame=64)
    server.receive_data(client.send(Hello()) + client.send(Request(1, "big", {})))
    assert isinstance(server.next_event(), Hello)
    server.send(Hello())
    assert server.next_event() == Request(1, "big", {})
    with pytest.raises(ProtocolError) as info:
        server.send(Response(1, "x" * 1000))
    assert info.value.code == "too_large"
    assert server.open_requests == {1}  # so the error answer can still be sent
    server.send(ErrorResponse(1, "too_large", "result too large"))
    assert server.open_requests == frozenset()


def test_unencodable_values_are_protocol_errors() -> None:
    client, server = pair()
    request(client, server, Request(1, "a", {}))
    with pytest.raises(ProtocolError) as info:
        server.send(Response(1, object()))
    assert info.value.code == "unencodable"
    with pytest.raises(ProtocolError):
        server.send(Response(1, 1 << 70))


def test_random_bytes_only_ever_raise_protocol_error() -> None:
    """Whatever arrives, the state machine answers with an event, NEED_DATA,
    CLOSED or ProtocolError, and never buffers more than one frame."""
    rng = random.Random(6)
    seen_errors = 0
    for _ in range(3000):
        server = Connection(SERVER, max_frame=4096)
        if rng.random() < 0.5:
            server.receive_data(frame({"hello": "outpost", "version": 1}))
        for _ in range(rng.randint(1, 4)):
            chunk = rng.randbytes(rng.randint(0, 64))
            if rng.random() < 0.3:
                chunk = struct.pack(">I", rng.randint(0, 5000)) + chunk
            server.receive_data(chunk)
            try:
                while server.next_event() not in (NEED_DATA, CLOSED):
                    pass
            except ProtocolError:
                seen_errors += 1
                break
            assert server.buffered <= 4096 + 4 + 64 + 4
    assert seen_errors > 1000  # random bytes are mostly rejected, not silently accepted


def test_a_table_arrives_as_a_list_of_maps_and_travels_smaller() -> None:
    client, server = pair()
    columns = ("name", "state", "pid")
    rows = [(f"agent{i}", "running", 100 + i) for i in range(10)]
    as_maps = [dict(zip(columns, r, strict=True)) for r in rows]
    request(client, server, Request(1, "status", {}))
    data = server.send(Response(1, {"agents": Table(columns, rows), "n": 10}))
    client.receive_data(data)
    assert client.next_event() == Response(1, {"agents": as_maps, "n": 10})
    assert len(data) < len(frame({"id": 1, "result": {"agents": as_maps, "n": 10}}))
    request(client, server, Request(2, "status", {}))  # an empty table is an empty list
    client.receive_data(server.send(Response(2, Table(columns, []))))
    assert client.next_event() == Response(2, [])


def _table_frame(payload: object, code: int = 1) -> bytes:
    ext = msgpack.ExtType(code, msgpack.packb(payload, use_bin_type=True))
    return frame({"id": 1, "result": ext})


@pytest.mark.parametrize("data", [
    _table_frame([["a", "b"], [[1, 2], [3]]]),  # a short row
    _table_frame([["a", 2], [[1, 2]]]),  # a column that is not a string
    _table_frame([["a"]]),  # no rows part
    _table_frame({"a": 1}),  # not [columns, rows]
    _table_frame([["a"], [1]]),  # a row that is not an array
    _table_frame([["a"], [[1]]], code=9),  # an ext type we do not know
    frame({"id": 1, "result": msgpack.ExtType(1, b"\xc1")}),  # undecodable table data
])
def test_a_malformed_table_is_a_protocol_error(data: bytes) -> None:
    client, _ = pair()
    client.send(Request(1, "status", {}))
    client.receive_data(data)
    with pytest.raises(ProtocolError, match="undecodable"):
        client.next_event()


def test_an_unencodable_result_leaves_the_connection_usable() -> None:
    client, server = pair()
    request(client, server, Request(1, "x", {}))
    with pytest.raises(ProtocolError, match="cannot encode"):
        server.send(Response(1, {"table": Table(("a",), [(object(),)])}))
    client.receive_data(server.send(Response(1, {"ok": True})))  # nothing half-packed leaks
    assert client.next_event() == Response(1, {"ok": True})


# -- the ERROR state, and whose fault an error is -------------------------------------


def test_error_latch_after_a_remote_error_every_later_call_raises_again() -> None:
    client, server = pair()
    server.receive_data(frame({"id": 1, "method": 5}) + client.send(Request(2, "fine", {})))
    with pytest.raises(RemoteProtocolError, match="no method name") as first:
        server.next_event()
    assert server.state is ERROR and server.error is first.value
    for _ in range(2):  # the good request behind the bad one is never handed out
        with pytest.raises(RemoteProtocolError, match=r"ERROR state.*no method name") as again:
            server.next_event()
        assert again.value.code == first.value.code == "bad_request"
    with pytest.raises(RemoteProtocolError):
        server.send(Response(2, None))
    # The refusal is the server's last word: it may always go, so the client learns why.
    client.receive_data(server.send(ErrorResponse(None, "bad_request", str(first.value))))
    assert client.next_event() == ErrorResponse(None, "bad_request", str(first.value))


def test_error_latch_after_a_local_error_every_later_call_raises_again() -> None:
    client, server = pair()
    request(client, server, Request(1, "a", {}))
    with pytest.raises(LocalProtocolError, match="not open") as first:
        server.send(Response(9, None))  # our bug: an answer to nothing
    assert server.state is ERROR
    with pytest.raises(LocalProtocolError, match="ERROR state"):
        server.send(Response(1, None))  # even a correct answer now
    server.receive_data(client.send(Request(2, "b", {})))
    with pytest.raises(LocalProtocolError, match="ERROR state") as again:
        server.next_event()
    assert again.value.code == first.value.code == "bad_id"
    server.send(ErrorResponse(None, "internal", "bug"))  # still its last word


def test_a_client_latches_too_and_may_not_refuse() -> None:
    client, _ = pair()
    client.receive_data(frame({"id": 3, "result": 1}))  # an answer to nothing
    with pytest.raises(RemoteProtocolError, match="not open"):
        client.next_event()
    with pytest.raises(RemoteProtocolError, match="ERROR state"):
        client.send(Request(1, "a", {}))
    with pytest.raises(RemoteProtocolError, match="ERROR state"):
        client.send(ErrorResponse(None, "x", "only a server refuses"))


def test_a_value_that_cannot_travel_does_not_latch() -> None:
    client, server = pair()
    request(client, server, Request(1, "a", {}))
    with pytest.raises(LocalProtocolError) as info:
        server.send(Response(1, object()))
    assert info.value.code == "unencodable"
    with pytest.raises(LocalProtocolError) as info:
        client.send(Request(2, "big", {"x": "y" * MAX_FRAME}))
    assert info.value.code == "too_large"
    assert server.state is OPEN and client.state is OPEN and client.open_requests == {1}
    client.receive_data(server.send(Response(1, "fine")))
    assert client.next_event() == Response(1, "fine")


def test_eof_moves_the_state_to_closed() -> None:
    _, server = pair()
    assert server.state is OPEN
    server.receive_data(b"")
    assert server.next_event() is CLOSED
    assert server.state is CLOSED


@pytest.mark.parametrize(("who", "act"), [
    ("remote", lambda c, s: (s.receive_data(b"\x00\x00\x00\x01\xc1"), s.next_event())),
    ("remote", lambda c, s: (s.receive_data(struct.pack(">I", MAX_FRAME + 1)), s.next_event())),
    ("remote", lambda c, s: (s.receive_data(frame({"id": 1, "method": "a"}) * 2),
                             s.next_event(), s.next_event())),  # a duplicate id, received
    ("remote", lambda c, s: (c.receive_data(frame({"id": 4, "end": True})), c.next_event())),
    ("remote", lambda c, s: (c.receive_data(frame({"id": None})), c.next_event())),
    ("local", lambda c, s: (c.send(Request(1, "a", {})), c.send(Request(1, "a", {})))),
    ("local", lambda c, s: s.send(StreamItem(4, 1))),
    ("local", lambda c, s: c.send(Hello())),
    ("local", lambda c, s: s.send(Request(1, "a", {}))),
])
def test_errors_say_whose_fault_they_are(who: str, act) -> None:
    client, server = pair()
    expected = RemoteProtocolError if who == "remote" else LocalProtocolError
    with pytest.raises(ProtocolError) as info:
        act(client, server)
    assert type(info.value) is expected
