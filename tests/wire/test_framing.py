"""Frames and msgpack bodies with limits, driven with bytes only."""

from __future__ import annotations

import struct

import msgpack
import pytest

from runtime.wire.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from runtime.wire.framing import (
    CLOSED,
    NEED_DATA,
    SMALL_BODY,
    Decoder,
    Encoder,
    FrameReader,
)

LIMIT = 1 << 20


def reader(limit: int = LIMIT, max_container: int = LIMIT) -> FrameReader:
    return FrameReader(Decoder(limit, max_container=max_container, strict_map_key=False))


def frame_of(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def drain(frames: FrameReader) -> list:
    out = []
    while (value := frames.next_frame()) is not NEED_DATA and value is not CLOSED:
        out.append(value)
    return out


def test_frames_round_trip_whole_split_and_batched() -> None:
    encode = Encoder(LIMIT).frame
    values = [["state", 1, "set", "k", {"a": [1, 2.5, None, b"\x00"]}], {}, "x" * 300, 7]
    data = b"".join(encode(v) for v in values)
    assert data[:4] == struct.pack(">I", len(msgpack.packb(values[0])))  # 4-byte big-endian
    frames = reader()
    frames.receive_data(data)
    assert drain(frames) == values
    assert frames.buffered == 0
    frames = reader()
    got = []
    for i in range(len(data)):  # every byte boundary
        frames.receive_data(data[i:i + 1])
        got += drain(frames)
    assert got == values


def test_an_oversized_length_is_refused_before_the_body_is_buffered() -> None:
    frames = reader(limit=1024)
    frames.receive_data(struct.pack(">I", 1025) + b"x" * 10)
    with pytest.raises(RemoteProtocolError) as info:
        frames.next_frame()
    assert info.value.code == "too_large"
    assert "1025" in str(info.value) and "1024" in str(info.value)
    assert frames.buffered == 14  # the header said no; the body was never awaited


def test_close_between_frames_is_closed_and_inside_one_an_error() -> None:
    frames = reader()
    frames.receive_data(Encoder(LIMIT).frame([1]) + b"")
    frames.receive_data(b"")
    assert frames.next_frame() == [1]
    assert frames.next_frame() is CLOSED
    frames = reader()
    frames.receive_data(Encoder(LIMIT).frame([1, 2, 3])[:-1])
    assert frames.next_frame() is NEED_DATA
    frames.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        frames.next_frame()


@pytest.mark.parametrize(("body", "why"), [
    (b"\xdd\xff\xff\xff\xff", "exceeds max_array_len"),  # 4 G elements declared in 5 bytes
    (b"\xdf\xff\xff\xff\xff", "exceeds max_map_len"),
    (b"\xdb\xff\xff\xff\xff", "incomplete input"),  # a string is not allocated before its bytes
    (b"\xc6\xff\xff\xff\xff", "incomplete input"),
    (b"\x91" * 1025 + b"\xc0", "nested deeper than msgpack's 1024 levels"),
    (b"\x93\x01\x02", "incomplete input"),
    (msgpack.packb([1]) + b"\x00\x00", "2 bytes after its value"),
    (b"\xc1", "undecodable msgpack frame"),
])
def test_hostile_bodies_are_refused_with_what_was_wrong(body: bytes, why: str) -> None:
    frames = reader()
    frames.receive_data(frame_of(body))
    with pytest.raises(RemoteProtocolError, match="undecodable msgpack frame") as info:
        frames.next_frame()
    assert why in str(info.value)


def test_nesting_up_to_msgpack_s_limit_passes() -> None:
    decode = Decoder(LIMIT, max_container=LIMIT)
    value = decode(b"\x91" * 1024 + b"\xc0")
    for _ in range(1024):
        value = value[0]
    assert value is None


def test_a_decoder_is_clean_after_refusing_a_body() -> None:
    """A refused body leaves nothing behind that spoils the next one."""
    decode = Decoder(LIMIT, max_container=LIMIT)
    for bad in (msgpack.packb(1) + b"\x05", b"\x92\x01", b"\x91" * 2000, b"\xdd\xff\xff\xff\xff"):
        with pytest.raises(RemoteProtocolError):
            decode(bad)
        assert decode(msgpack.packb(["next", 2])) == ["next", 2]


def test_containers_are_bounded_by_the_body_and_by_max_container() -> None:
    decode = Decoder(LIMIT, max_container=10)
    assert decode(msgpack.packb(list(range(10)))) == list(range(10))
    with pytest.raises(RemoteProtocolError, match="max_array_len"):
        decode(msgpack.packb(list(range(11))))
    big = Decoder(8 << 20, max_container=8 << 20)
    values = list(range(100)) * 20_000  # 2 M one-byte elements: more than 64 Ki, within the body
    assert big(msgpack.packb(values)) == values
    declared = b"\xdd" + struct.pack(">I", 3_000_000) + b"\x00" * (SMALL_BODY + 10)
    with pytest.raises(RemoteProtocolError, match="max_array_len"):
        big(declared)  # a big body still cannot declare more elements than it has bytes


@pytest.mark.parametrize("size", [100, SMALL_BODY - 20, SMALL_BODY + 1, 3 << 20])
def test_small_and_large_bodies_decode_alike(size: int) -> None:
    frames = reader(limit=4 << 20)
    value = {"blob": b"z" * size, "n": [1, 2, 3]}
    frames.receive_data(Encoder(4 << 20).frame(value) * 2)
    assert drain(frames) == [value, value]
    frames.receive_data(frame_of(msgpack.packb(value) + b"\x00"))
    with pytest.raises(RemoteProtocolError, match="undecodable"):
        frames.next_frame()


def test_map_keys_are_strict_unless_asked() -> None:
    body = msgpack.packb({1: "a"})
    assert Decoder(LIMIT, max_container=10, strict_map_key=False)(body) == {1: "a"}
    with pytest.raises(RemoteProtocolError):
        Decoder(LIMIT, max_container=10)(body)


def test_the_encoder_refuses_what_cannot_travel_and_stays_usable() -> None:
    encoder = Encoder(64)
    with pytest.raises(LocalProtocolError) as info:
        encoder.frame("x" * 100)
    assert info.value.code == "too_large"
    assert "100" in str(info.value) or "102" in str(info.value)
    for value in (object(), 1 << 70):
        with pytest.raises(LocalProtocolError) as info:
            encoder.frame([1, value])
        assert info.value.code == "unencodable"
    assert encoder.frame([1]) == frame_of(msgpack.packb([1]))  # nothing half-packed leaks
    assert encoder.pack({"a": 1}) == msgpack.packb({"a": 1})


def test_both_kinds_of_error_are_protocol_errors() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert ProtocolError("x").code == "bad_frame"
