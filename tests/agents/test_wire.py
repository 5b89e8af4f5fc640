"""The process-agent channel as a sans-IO state machine, driven with bytes only."""

from __future__ import annotations

import struct

import msgpack
import pytest

from runtime.agents.wire import (
    AGENT,
    MAX_FRAME,
    RUNTIME,
    Ack,
    Connection,
    ExitReport,
    Hello,
    Ready,
    Recv,
    Reply,
    Send,
    StateOp,
)
from runtime.wire.connection import ERROR
from runtime.wire.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from runtime.wire.framing import CLOSED, NEED_DATA


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def pair(state: dict | None = None) -> tuple[Connection, Connection]:
    """(agent, runtime) after the hello."""
    agent, runtime = Connection(AGENT), Connection(RUNTIME)
    agent.receive_data(runtime.send(Hello(state or {})))
    assert agent.next_event() == Hello(state or {})
    return agent, runtime


def carry(sender: Connection, receiver: Connection, event: object) -> object:
    receiver.receive_data(sender.send(event))
    got = receiver.next_event()
    assert receiver.next_event() is NEED_DATA
    return got


REQUESTS = [StateOp(1, "set", "k", {"a": [1, 2]}), StateOp(2, "del", "k", None),
            StateOp(3, "incr", "n", 2.5), StateOp(4, "merge", "m", {"x": 1}),
            Send(5, "other", {"body": b"\x00"}, "idem-1"), Send(6, "other", "hi", None),
            Recv(7), Ack(8, 41)]


def test_a_whole_conversation_round_trips() -> None:
    agent, runtime = pair({"count": 3, "blob": b"\x01"})
    for request in REQUESTS:
        assert carry(agent, runtime, request) == request
    assert agent.open_requests == runtime.open_requests == {r.req for r in REQUESTS}
    assert carry(agent, runtime, Ready()) == Ready()
    for request in REQUESTS:
        reply = Reply(request.req, True, [request.req, "x"]) if request.req % 2 \
            else Reply(request.req, False, "StateError: no")
        assert carry(runtime, agent, reply) == reply
    assert agent.open_requests == runtime.open_requests == frozenset()
    assert carry(agent, runtime, ExitReport("ValueError: boom")) == ExitReport("ValueError: boom")
    runtime.receive_data(b"")
    assert runtime.next_event() is CLOSED


def test_the_bytes_are_length_prefixed_msgpack_lists() -> None:
    """The wire format: a 4-byte big-endian length, then one msgpack list per frame."""
    agent, runtime = Connection(AGENT), Connection(RUNTIME)
    assert runtime.send(Hello({"k": 1})) == frame(["hello", 0, {"state": {"k": 1}}])
    agent.receive_data(frame(["hello", 0, {"state": {"k": 1}}]))
    agent.next_event()
    sent = [(StateOp(1, "set", "k", 2), ["state", 1, "set", "k", 2]),
            (Send(2, "b", "m", None), ["send", 2, "b", "m", None]),
            (Recv(3), ["recv", 3]), (Ack(4, 7), ["ack", 4, 7]),
            (Ready(), ["ready", 0, None]), (ExitReport(None), ["exit", 0, None])]
    for event, as_list in sent:
        assert agent.send(event) == frame(as_list)
    runtime = Connection(RUNTIME)
    runtime.send(Hello({}))
    runtime.receive_data(frame(["state", 1, "set", "k", 2]))
    runtime.next_event()
    assert runtime.send(Reply(1, True, 3)) == frame(["ok", 1, 3])


def test_state_values_up_to_the_frame_limit_travel() -> None:
    agent, runtime = pair()
    numbers = list(range(100)) * 30_000  # 3 M small ints: far more than 64 Ki elements
    assert carry(agent, runtime, StateOp(1, "set", "n", numbers)).arg == numbers
    blob = b"x" * (MAX_FRAME - 100)
    assert carry(agent, runtime, StateOp(2, "set", "b", blob)).arg == blob
    nested: object = 1
    for _ in range(200):  # 400 msgpack levels
        nested = {"k": [nested]}
    assert carry(agent, runtime, Send(3, "b", nested, None)).msg == nested
    state = {f"key{i}": i for i in range(200_000)}  # int keys too: state maps are not strict
    agent = Connection(AGENT)
    agent.receive_data(Connection(RUNTIME).send(Hello({**state, 7: "seven"})))
    assert agent.next_event() == Hello({**state, 7: "seven"})


def test_a_value_too_large_is_refused_on_sending_and_the_channel_stays_usable() -> None:
    agent, runtime = pair()
    with pytest.raises(LocalProtocolError) as info:
        agent.send(StateOp(1, "set", "big", b"x" * MAX_FRAME))
    assert info.value.code == "too_large"
    with pytest.raises(LocalProtocolError) as info:
        agent.send(Send(1, "b", object(), None))
    assert info.value.code == "unencodable"
    assert agent.open_requests == frozenset()  # nothing was sent
    assert carry(agent, runtime, StateOp(1, "set", "k", 1)) == StateOp(1, "set", "k", 1)


@pytest.mark.parametrize(("data", "why"), [
    (struct.pack(">I", MAX_FRAME + 1), "exceeds the 4194304-byte limit"),
    (b"\xff\xff\xff\xff", "frame of 4294967295 bytes"),
    (struct.pack(">I", 5) + b"\xdd\xff\xff\xff\xff", "exceeds max_array_len"),
    (struct.pack(">I", 1026) + b"\x91" * 1025 + b"\xc0", "nested deeper"),
    (frame({"state": 1}), "expected a frame [kind, req, ...], got {'state': 1}"),
    (frame(["state", 1, "set", "k"]), "'state' frame of 4 items"),
    (frame(["state", 1, "rename", "k", "j"]), "unknown state op 'rename'"),
    (frame(["state", "1", "set", "k", 1]), "a request id must be an integer, got '1'"),
    (frame(["state", True, "set", "k", 1]), "got True"),
    (frame(["recv", 1, None]), "'recv' frame of 3 items"),
    (frame(["shutdown", 0]), "not an agent request: 'shutdown'"),
    (frame(["exit", 0, 5]), "summary must be a string or nil"),
    (frame(["ok", 1, None]), "not an agent request: 'ok'"),
])
def test_what_an_agent_may_not_send_is_a_remote_error_that_says_why(data: bytes,
                                                                   why: str) -> None:
    _, runtime = pair()
    runtime.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        runtime.next_event()
    assert why in str(info.value)
    assert runtime.state is ERROR


def test_request_ids_are_tracked_on_both_sides() -> None:
    agent, runtime = pair()
    carry(agent, runtime, Recv(1))
    with pytest.raises(LocalProtocolError, match="in use"):
        agent.send(Recv(1))
    runtime.receive_data(frame(["recv", 1]))  # the same id again
    with pytest.raises(RemoteProtocolError, match="already in use"):
        runtime.next_event()
    agent, runtime = pair()
    with pytest.raises(LocalProtocolError, match="not open"):
        runtime.send(Reply(5, True, None))
    agent.receive_data(frame(["ok", 5, None]))
    with pytest.raises(RemoteProtocolError, match="not open"):
        agent.next_event()


@pytest.mark.parametrize(("data", "why"), [
    (frame(["ok", 1, None]), "expected the hello first"),
    (frame(["hello", 0, {"state": [1]}]), "expected the hello first"),
    (frame(["hello", 0]), "expected a frame [kind, req, value]"),
])
def test_the_agent_expects_the_hello_first(data: bytes, why: str) -> None:
    agent = Connection(AGENT)
    agent.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        agent.next_event()
    assert why in str(info.value)


@pytest.mark.parametrize("data", [
    frame(["hello", 0, {"state": {}}]),  # a second hello
    frame(["err", 1, 42]),  # an error reply without a message
    frame(["maybe", 1, None]),
    frame("ok"),
])
def test_what_the_runtime_may_not_send_is_a_remote_error(data: bytes) -> None:
    agent, runtime = pair()
    carry(agent, runtime, Recv(1))
    agent.receive_data(data)
    with pytest.raises(RemoteProtocolError):
        agent.next_event()


def test_each_side_sends_only_what_its_role_allows() -> None:
    for role, event, why in [
        (AGENT, Recv(1), "before the runtime's hello"),
        (AGENT, Reply(1, True), "does not send Reply"),
        (AGENT, Hello({}), "does not send Hello"),
        (RUNTIME, Reply(1, True), "hello before any reply"),
        (RUNTIME, Recv(1), "sends Hello and Reply, not Recv"),
        (RUNTIME, ExitReport(None), "not ExitReport"),
    ]:
        with pytest.raises(LocalProtocolError, match=why):
            Connection(role).send(event)
    agent, _ = pair()
    with pytest.raises(LocalProtocolError, match="unknown state op"):
        agent.send(StateOp(1, "rename", "k", None))
    runtime = Connection(RUNTIME)
    runtime.send(Hello({}))
    with pytest.raises(LocalProtocolError, match="already sent"):
        runtime.send(Hello({}))


def test_the_exit_report_is_the_agent_s_last_word() -> None:
    agent = Connection(AGENT)  # before any hello (e.g. its entry point did not load)
    runtime = Connection(RUNTIME)
    runtime.send(Hello({}))
    assert carry(agent, runtime, ExitReport("ImportError: x")) == ExitReport("ImportError: x")
    with pytest.raises(LocalProtocolError, match="after the exit report"):
        agent.send(Ready())
    runtime.receive_data(frame(["ready", 0, None]))
    with pytest.raises(RemoteProtocolError, match="after the agent's exit report"):
        runtime.next_event()
    agent, runtime = pair()
    agent.receive_data(b"\xc1\xc1\xc1\xc1")  # the runtime broke the channel ...
    with pytest.raises(RemoteProtocolError):
        agent.next_event()
    with pytest.raises(RemoteProtocolError, match="ERROR state"):
        agent.send(Recv(1))
    # ... and the agent can still say how it ended, once.
    assert carry(agent, runtime, ExitReport("boom")) == ExitReport("boom")
    with pytest.raises(ProtocolError):
        agent.send(ExitReport("again"))


def test_an_error_latches_the_runtime_side() -> None:
    agent, runtime = pair()
    runtime.receive_data(frame(["nope", 1]) + agent.send(Recv(1)))
    with pytest.raises(RemoteProtocolError, match="not an agent request") as first:
        runtime.next_event()
    with pytest.raises(RemoteProtocolError, match="ERROR state"):
        runtime.next_event()  # the good frame behind it is not handed out
    with pytest.raises(RemoteProtocolError, match="ERROR state"):
        runtime.send(Reply(1, True))
    assert runtime.error is first.value
