"""The template's packets as a sans-IO protocol, driven with bytes only."""

from __future__ import annotations

import msgpack
import pytest

from runtime.supervisor.template_wire import (
    MAX_PACKET,
    RUNTIME,
    TEMPLATE,
    Exited,
    Signal,
    Spawn,
    Spawned,
    SpawnFailed,
    TemplateWire,
)
from runtime.wire.errors import LocalProtocolError, RemoteProtocolError
from runtime.wire.framing import CLOSED

SPEC = {"kind": "exec", "name": "a", "cwd": None, "env": {"X": "1"}, "argv": ["true"]}


def carry(sender: TemplateWire, receiver: TemplateWire, event: object) -> object:
    return receiver.receive_packet(sender.send(event))


def test_spawn_signal_and_reports_round_trip() -> None:
    runtime, template = TemplateWire(RUNTIME), TemplateWire(TEMPLATE)
    assert carry(runtime, template, Spawn(1, SPEC)) == Spawn(1, SPEC)
    assert carry(runtime, template, Spawn(2, SPEC)) == Spawn(2, SPEC)
    assert runtime.open_spawns == {1, 2}
    assert carry(template, runtime, Spawned(1, 4242)) == Spawned(1, 4242)
    assert carry(template, runtime, SpawnFailed(2, "fork failed")) == SpawnFailed(2, "fork failed")
    assert runtime.open_spawns == frozenset()
    assert runtime.alive(4242)
    assert carry(runtime, template, Signal(4242, 15)) == Signal(4242, 15)
    assert carry(template, runtime, Exited(4242, None, 15)) == Exited(4242, None, 15)
    assert not runtime.alive(4242)
    assert runtime.receive_packet(b"") is CLOSED and template.receive_packet(b"") is CLOSED


def test_the_bytes_are_today_s() -> None:
    runtime, template = TemplateWire(RUNTIME), TemplateWire(TEMPLATE)
    pack = msgpack.packb
    assert runtime.send(Spawn(1, SPEC)) == pack(["spawn", 1, SPEC])
    assert runtime.send(Signal(7, 9)) == pack(["signal", 7, 9])
    assert template.send(Spawned(1, 7)) == pack(["spawned", 1, 7])
    assert template.send(SpawnFailed(1, "no")) == pack(["spawn-failed", 1, "no"])
    assert template.send(Exited(7, 3, None)) == pack(["exit", 7, 3, None])


@pytest.mark.parametrize(("packet", "why"), [
    (b"\xc1", "undecodable msgpack packet"),
    (b"\xdd\xff\xff\xff\xff", "exceeds max_array_len"),
    (msgpack.packb(["spawn", 1, SPEC]) + b"\x00", "1 bytes after its value"),
    (msgpack.packb({"spawn": 1}), "expected a packet [kind, ...], got dict"),
    (msgpack.packb([]), "got list"),
    (msgpack.packb(["spawn", 1, ["not", "a", "map"]]), "spec must be a map"),
    (msgpack.packb(["spawn", "1", SPEC]), "request id must be an integer"),
    (msgpack.packb(["signal", 5, "TERM"]), "signal number must be an integer"),
    (msgpack.packb(["spawn", 1]), "'spawn' of 2 items"),
    (msgpack.packb(["exec", "rm"]), "not a runtime packet: 'exec'"),
])
def test_a_malformed_packet_for_the_template_is_refused_with_why(packet: bytes,
                                                                why: str) -> None:
    template = TemplateWire(TEMPLATE)
    with pytest.raises(RemoteProtocolError) as info:
        template.receive_packet(packet)
    assert why in str(info.value)
    assert carry(TemplateWire(RUNTIME), template, Spawn(1, SPEC)) == Spawn(1, SPEC)  # usable


@pytest.mark.parametrize(("packet", "why"), [
    (msgpack.packb(["spawned", 9, 100]), "spawn request 9, which is not open"),
    (msgpack.packb(["spawned", 1, 0]), "pid must be positive"),
    (msgpack.packb(["spawned", 1, "100"]), "spawned pid must be an integer"),
    (msgpack.packb(["spawn-failed", 1, 5]), "reason must be a string"),
    (msgpack.packb(["exit", 100, 0, None]), "pid 100, which is not an agent"),
    (msgpack.packb(["exit", 55, "0", None]), "exit code must be an integer"),
    (msgpack.packb(["exit", 55, 0]), "'exit' of 3 items"),
    (msgpack.packb(["spawn", 1, SPEC]), "not a template packet: 'spawn'"),
])
def test_a_malformed_report_for_the_runtime_is_refused_and_changes_nothing(packet: bytes,
                                                                          why: str) -> None:
    runtime, template = TemplateWire(RUNTIME), TemplateWire(TEMPLATE)
    carry(runtime, template, Spawn(1, SPEC))
    carry(runtime, template, Spawn(2, SPEC))
    carry(template, runtime, Spawned(2, 55))
    with pytest.raises(RemoteProtocolError) as info:
        runtime.receive_packet(packet)
    assert why in str(info.value)
    assert runtime.open_spawns == {1} and runtime.alive(55)
    assert carry(template, runtime, Spawned(1, 100)) == Spawned(1, 100)


def test_each_side_sends_only_its_own_packets_and_limits_them() -> None:
    runtime, template = TemplateWire(RUNTIME), TemplateWire(TEMPLATE)
    for wire, event in ((template, Spawn(1, SPEC)), (template, Signal(1, 9)),
                        (runtime, Spawned(1, 2)), (runtime, Exited(1, 0, None))):
        with pytest.raises(LocalProtocolError, match="does not send"):
            wire.send(event)
    runtime.send(Spawn(1, SPEC))
    with pytest.raises(LocalProtocolError, match="already open"):
        runtime.send(Spawn(1, SPEC))
    with pytest.raises(LocalProtocolError, match="must be a dict"):
        runtime.send(Spawn(2, ["true"]))
    with pytest.raises(LocalProtocolError) as info:
        runtime.send(Spawn(3, {"env": {"X": "x" * MAX_PACKET}}))
    assert info.value.code == "too_large"
    assert runtime.open_spawns == {1}  # the refused spawns were not opened
