"""Declared params: names, types, ranges, defaults; every refusal names its field."""

from __future__ import annotations

import math

import pytest

from runtime.control.errors import MethodError
from runtime.control.params import (
    Bool,
    Int,
    Map,
    Number,
    OneOf,
    Params,
    Str,
    Value,
    accepts,
    params_of,
)

SPEC = Params(Str("agent", required=True), Int("limit", lo=1, hi=10, default=5),
              Number("since", doc="seconds since the epoch"), Bool("all", default=False),
              OneOf("format", ("a", "b"), default="a"), Value("value"),
              Map("args", params=Params(Str("arg"))))


def refused(spec: Params, raw: object) -> str:
    with pytest.raises(MethodError) as caught:
        spec.parse(raw)  # type: ignore[arg-type]
    assert caught.value.code == "bad_params"
    return str(caught.value)


def test_defaults_fill_every_declared_name() -> None:
    assert SPEC.parse({"agent": "x"}) == {"agent": "x", "limit": 5, "since": None,
                                          "all": False, "format": "a", "value": None,
                                          "args": None}
    assert Params(Int("n", lo=0, hi=1, default=1)).parse(None) == {"n": 1}
    assert Params().parse({}) == {}


def test_good_values_come_through_checked() -> None:
    got = SPEC.parse({"agent": "x", "limit": 10, "since": 3, "all": True, "format": "b",
                      "value": [1, {"a": None}], "args": {"arg": "/tmp/b"}})
    assert got["since"] == 3.0 and type(got["since"]) is float
    assert (got["limit"], got["all"], got["format"]) == (10, True, "b")
    assert got["args"] == {"arg": "/tmp/b"}
    assert SPEC.parse({"agent": "x", "limit": None})["limit"] == 5  # null: not given


@pytest.mark.parametrize(("raw", "field"), [
    ({"agent": "x", "backlog": 10**9}, "params.backlog is not a parameter"),
    ({"agent": "x", "limit": 0}, "params.limit must be an integer from 1 to 10"),
    ({"agent": "x", "limit": 11}, "params.limit must be an integer from 1 to 10"),
    ({"agent": "x", "limit": True}, "params.limit must be an integer"),
    ({"agent": "x", "limit": 2.0}, "params.limit must be an integer"),
    ({"agent": "x", "since": []}, "params.since must be a finite number (seconds since"),
    ({"agent": "x", "since": math.nan}, "params.since must be a finite number"),
    ({"agent": "x", "since": math.inf}, "params.since must be a finite number"),
    ({"agent": "x", "since": False}, "params.since must be a finite number"),
    ({"agent": "x", "all": 1}, "params.all must be true or false"),
    ({"agent": "x", "format": "c"}, "params.format must be one of 'a', 'b'"),
    ({"agent": {}}, "params.agent must be a non-empty string"),
    ({"agent": ""}, "params.agent must be a non-empty string"),
    ({"agent": b"x"}, "params.agent must be a non-empty string"),
    ({}, "params.agent is required"),
    ({"agent": None}, "params.agent is required"),
    ({"agent": "x", "args": []}, "params.args must be a map"),
    ({"agent": "x", "args": {"arg": 5}}, "params.args.arg must be a non-empty string"),
    ({"agent": "x", "args": {"x": 1}}, "params.args.x is not a parameter"),
    ({"agent": "x", b"raw": 1}, "params.b'raw' is not a parameter"),
])
def test_each_refusal_names_the_field(raw: dict, field: str) -> None:
    assert field in refused(SPEC, raw)


def test_unknown_names_are_refused_with_what_the_method_takes() -> None:
    message = refused(Params(Str("task"), Map("args")), {"since": [], "until": None})
    assert message.startswith("params.since is not a parameter") and "task, args" in message
    assert "no params" in refused(Params(), {"x": 1})
    assert refused(Params(), [1]) == "params must be a map"


def test_value_params_take_null_as_a_value() -> None:
    spec = Params(Value("value", required=True))
    assert spec.parse({"value": None}) == {"value": None}
    assert "params.value is required: a value (null is one)" in refused(spec, {})


def test_str_length_and_open_params() -> None:
    assert "at most 3 characters" in refused(Params(Str("k", max_len=3)), {"k": "abcd"})
    assert Params(Int("n", lo=0, hi=9), open=True).parse({"n": 1, "x": [2]}) == \
        {"n": 1, "x": [2]}


def test_a_name_is_declared_once_and_descriptions_are_plain_data() -> None:
    with pytest.raises(ValueError, match="twice"):
        Params(Str("a"), Int("a", lo=0, hi=1))
    described = {d["name"]: d for d in SPEC.describe()}
    assert described["agent"] == {"name": "agent", "type": "str", "required": True,
                                  "what": "a non-empty string"}
    assert described["limit"]["default"] == 5 and described["format"]["values"] == ["a", "b"]
    assert SPEC.names[:2] == ["agent", "limit"]


def test_accepts_declares_without_wrapping() -> None:
    async def handler(params: dict) -> dict:
        return params

    assert params_of(handler) is None
    declared = accepts(Str("a"))(handler)
    assert declared is handler  # no wrapper: nothing added on the call path
    assert params_of(handler).names == ["a"]
