"""The one Methods table: dispatch, params checked before a handler runs, callers,
errors. In process, as a rule or a job would call it."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from runtime.control.dispatch import INTERNAL, Caller, Methods, current_caller
from runtime.control.errors import METHOD_CODES, MethodError
from runtime.control.params import Int, accepts
from tests.runtime_proc import ROOT


def table() -> tuple[Methods, list[dict]]:
    ran: list[dict] = []

    @accepts(Int("n", lo=0, hi=9, required=True))
    async def add_one(params: dict[str, Any]) -> int:
        ran.append(params)
        return params["n"] + 1

    @accepts()
    async def who(params: dict[str, Any]) -> Caller:
        return current_caller()

    @accepts()
    async def crash(params: dict[str, Any]) -> None:
        raise KeyError("a bug")

    @accepts()
    async def refuse(params: dict[str, Any]) -> None:
        raise MethodError("not_found", "no such thing")

    methods = Methods()
    methods.add({"add_one": add_one, "who": who, "crash": crash, "refuse": refuse})
    return methods, ran


async def test_call_runs_the_handler_with_checked_params() -> None:
    methods, ran = table()
    assert await methods.call("add_one", {"n": 2}) == 3
    assert ran == [{"n": 2}]
    assert methods.names() == ["add_one", "crash", "refuse", "who"]
    assert "who" in methods and "nope" not in methods
    assert methods.params("add_one").names == ["n"]


async def test_a_request_not_understood_never_reaches_the_handler() -> None:
    methods, ran = table()
    for params in ({"n": 10}, {"n": "2"}, {}, {"n": 1, "extra": 0}):
        with pytest.raises(MethodError) as caught:
            await methods.call("add_one", params)
        assert caught.value.code == "bad_params" and "params." in str(caught.value)
    assert ran == []


async def test_unknown_methods_bugs_and_refusals(caplog: pytest.LogCaptureFixture) -> None:
    methods, _ = table()
    with pytest.raises(MethodError) as unknown:
        await methods.call("nope")
    assert unknown.value.code == "unknown_method" and "add_one" in str(unknown.value)
    with pytest.raises(MethodError) as refused:
        await methods.call("refuse")
    assert (refused.value.code, str(refused.value)) == ("not_found", "no such thing")
    with caplog.at_level(logging.ERROR, logger="outpost.control"), \
            pytest.raises(MethodError) as bug:
        await methods.call("crash")
    # A bug is an `internal` answer (logged with its traceback), never a "not found".
    assert bug.value.code == "internal" and "KeyError" in str(bug.value)
    assert any(r.exc_info and "control method crash failed" in r.getMessage()
               for r in caplog.records)


async def test_the_handler_sees_its_caller() -> None:
    methods, _ = table()
    rule = Caller("rule", "flaky")
    assert await methods.call("who", caller=rule) == rule
    assert await methods.call("who") is INTERNAL
    assert current_caller() is INTERNAL


def test_add_refuses_duplicates_and_undeclared_handlers_all_or_nothing() -> None:
    methods, _ = table()

    async def bare(params: dict[str, Any]) -> None:
        return None

    with pytest.raises(ValueError, match="'who' is defined twice"):
        methods.add({"who": accepts()(lambda p: p)})
    with pytest.raises(TypeError, match="does not declare its params"):
        methods.add({"fresh": accepts()(lambda p: p), "bare": bare})
    assert "fresh" not in methods


def test_every_code_a_method_raises_is_documented_in_one_place() -> None:
    raised = set()
    for path in (ROOT / "runtime").rglob("*.py"):
        raised |= set(re.findall(r'MethodError\(\s*"(\w+)"', path.read_text()))
    assert {"bad_params", "not_found", "busy"} <= raised  # the scan finds them
    assert raised <= set(METHOD_CODES), raised - set(METHOD_CODES)
