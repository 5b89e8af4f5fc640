"""The sans-IO control protocol, driven with bytes only."""

from __future__ import annotations

import struct

import msgpack
import pytest

from runtime.control.protocol import (
    CLIENT,
    CLOSED,
    NEED_DATA,
    SERVER,
    Connection,
    ErrorResponse,
    Hello,
    ProtocolError,
    Request,
    Response,
    StreamEnd,
    StreamItem,
)


def pair() -> tuple[Connection, Connection]:
    client, server = Connection(CLIENT), Connection(SERVER)
    server.receive_data(client.send(Hello()))
    assert isinstance(server.next_event(), Hello)
    client.receive_data(server.send(Hello(server="outpost test")))
    assert client.next_event() == Hello(server="outpost test")
    return client, server


def test_request_response_round_trip() -> None:
    client, server = pair()
    server.receive_data(client.send(Request(7, "status", {"agent": "a"})))
    assert server.next_event() == Request(7, "status", {"agent": "a"})
    for event in (Response(7, {"ok": [1, 2]}), ErrorResponse(8, "not_found", "no"),
                  StreamItem(9, "x"), StreamEnd(9)):
        client.receive_data(server.send(event))
        assert client.next_event() == event
    assert client.next_event() is NEED_DATA


def test_frames_split_at_every_byte_boundary() -> None:
    client, server = pair()
    data = client.send(Request(1, "a", {})) + client.send(Request(2, "b", {"k": "v" * 100}))
    events = []
    for i in range(len(data)):
        server.receive_data(data[i:i + 1])
        while (event := server.next_event()) is not NEED_DATA:
            events.append(event)
    assert events == [Request(1, "a", {}), Request(2, "b", {"k": "v" * 100})]


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
    server.receive_data(struct.pack(">I", 10_000_000))
    with pytest.raises(ProtocolError) as info:
        server.next_event()
    assert info.value.code == "too_large"


@pytest.mark.parametrize("body", [
    b"\xc1",  # never-used msgpack byte
    msgpack.packb([1, 2, 3]),
    msgpack.packb({"hello": "other", "version": 1}),
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
    {"id": 1, "method": "status", "params": [1]},
    {"id": True, "method": "status"},
])
def test_malformed_requests_are_protocol_errors(msg: dict) -> None:
    _, server = pair()
    body = msgpack.packb(msg)
    server.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError):
        server.next_event()


def test_version_mismatch_is_named() -> None:
    server = Connection(SERVER)
    body = msgpack.packb({"hello": "outpost", "version": 99})
    server.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError, match="version 99") as info:
        server.next_event()
    assert info.value.code == "version"


def test_sending_an_oversized_result_is_refused() -> None:
    _, server = pair()
    small = Connection(SERVER, max_frame=64)
    small.handshaken = True
    with pytest.raises(ProtocolError):
        small.send(Response(1, "x" * 1000))
