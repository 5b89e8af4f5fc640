"""Declared params: each control method says once what it takes.

    @accepts(Str("agent", required=True, doc="an agent name"),
             Int("limit", lo=1, hi=10_000, default=100))
    async def handler(params: dict[str, Any]) -> Any:
        params["agent"], params["limit"]        # checked, every declared name present

`Methods.call` parses a request's params against its handler's declaration
before the handler runs, so a handler never sees a request it did not
understand: an unknown name, a missing required one, a wrong type or a value
out of range is answered `bad_params` with a message naming the field
("params.limit must be an integer from 1 to 10000"). Any room's methods (rules,
jobs, rollouts, uplink) declare theirs the same way.

Null means "not given" for an optional param (its default applies) and is
refused for a required one, except for `Value` params, where null is a value.

A method that changes something declares it: `@accepts(..., mutates="agent")`
(the param naming the agent it changes), `mutates=EVERY_AGENT` (e.g. reload)
or `mutates=True` (no agent lock). Such a method also takes `request_id` and
`wait`, declared here once for all of them; `Methods.call` hands the call to
its guard (runtime.control.mutations): apply once per request id, one
mutation at a time per agent, an audit event.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from runtime.control.errors import MethodError

F = TypeVar("F", bound=Callable[..., Any])

_PARAMS_ATTR = "control_params"


class Param:
    """One declared param: its name, required or its default, and the check of its value."""

    nullable = False  # is null a value (True), or "not given" (False)?
    what = "a value"  # what a good value is, for the refusal message

    def __init__(self, name: str, *, required: bool = False, default: Any = None,
                 doc: str = "") -> None:
        self.name = name
        self.required = required
        self.default = default
        self.doc = doc

    def check(self, value: Any, where: str) -> Any:
        """The value to hand to the handler, or a MethodError("bad_params")."""
        return value

    def refuse(self, where: str) -> MethodError:
        """The bad_params error naming this param and what it must be."""
        hint = f" ({self.doc})" if self.doc else ""
        return MethodError("bad_params", f"{where}.{self.name} must be {self.what}{hint}")

    def describe(self) -> dict[str, Any]:
        """Plain data saying what this param takes (for help texts and fuzzers)."""
        out = {"name": self.name, "type": type(self).__name__.lower(), "what": self.what,
               "required": self.required}
        if not self.required:
            out["default"] = self.default
        if self.doc:
            out["doc"] = self.doc
        return out


class Str(Param):
    """A non-empty string, at most `max_len` characters if given."""

    def __init__(self, name: str, *, max_len: int | None = None, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.max_len = max_len
        self.what = "a non-empty string" + (
            f" of at most {max_len} characters" if max_len is not None else "")

    def check(self, value: Any, where: str) -> Any:
        if type(value) is not str or not value or \
                (self.max_len is not None and len(value) > self.max_len):
            raise self.refuse(where)
        return value


class Int(Param):
    """An integer from `lo` to `hi` (booleans are not integers here)."""

    def __init__(self, name: str, *, lo: int, hi: int, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.lo, self.hi = lo, hi
        self.what = f"an integer from {lo} to {hi}"

    def check(self, value: Any, where: str) -> Any:
        if type(value) is not int or not self.lo <= value <= self.hi:
            raise self.refuse(where)
        return value


class Number(Param):
    """A finite number (int or float, handed over as a float), within [lo, hi]."""

    def __init__(self, name: str, *, lo: float = -math.inf, hi: float = math.inf,
                 **kw: Any) -> None:
        super().__init__(name, **kw)
        self.lo, self.hi = lo, hi
        bounds = (f" from {lo} to {hi}" if math.isfinite(lo) and math.isfinite(hi)
                  else f" >= {lo}" if math.isfinite(lo)
                  else f" <= {hi}" if math.isfinite(hi) else "")
        self.what = "a finite number" + bounds

    def check(self, value: Any, where: str) -> Any:
        if type(value) not in (int, float) or not math.isfinite(value) \
                or not self.lo <= value <= self.hi:
            raise self.refuse(where)
        return float(value)


class Bool(Param):
    """true or false."""

    what = "true or false"

    def check(self, value: Any, where: str) -> Any:
        if type(value) is not bool:
            raise self.refuse(where)
        return value


class OneOf(Param):
    """One of a few fixed values (compared with their type: 1 is not True)."""

    def __init__(self, name: str, values: tuple[Any, ...], **kw: Any) -> None:
        super().__init__(name, **kw)
        self.values = values
        self.what = "one of " + ", ".join(repr(v) for v in values)

    def check(self, value: Any, where: str) -> Any:
        if not any(type(value) is type(v) and value == v for v in self.values):
            raise self.refuse(where)
        return value

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "values": list(self.values)}


class Map(Param):
    """A map; with `params`, its entries are declared and checked like a method's own."""

    what = "a map"

    def __init__(self, name: str, *, params: Params | None = None, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.params = params

    def check(self, value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise self.refuse(where)
        return value if self.params is None else self.params.parse(value, f"{where}.{self.name}")


class Value(Param):
    """Any value the protocol can carry, null included (a state value, a message)."""

    nullable = True


EVERY_AGENT = "*"
"""`mutates=EVERY_AGENT`: the method changes every agent (reload): it waits for, or
is refused by, a mutation of any agent, and holds them all off while it runs."""

Mutates = str | bool | None
"""None: read-only. A param name: that param names the agent changed. EVERY_AGENT.
True: mutating, with no agent lock (the handler may take one itself)."""

REQUEST_ID_MAX = 128
MUTATION_PARAMS = (
    Str("request_id", max_len=REQUEST_ID_MAX,
        doc="apply once: a second request with this id gets the first answer"),
    Bool("wait", default=False,
         doc="wait for the agent's current mutation to end instead of answering busy"),
)
"""What every mutating method takes besides its own params."""


class Params:
    """What one method accepts. `parse` turns a request's raw params into the dict
    its handler gets: every declared name present (defaults filled in)."""

    def __init__(self, *params: Param, open: bool = False, mutates: Mutates = None) -> None:
        if mutates is not None and mutates is not False:
            if isinstance(mutates, str) and mutates != EVERY_AGENT and \
                    mutates not in {p.name for p in params}:
                raise ValueError(f"mutates={mutates!r} names no declared param")
            params = (*params, *MUTATION_PARAMS)
        self.mutates: Mutates = None if mutates is False else mutates
        self._params = {p.name: p for p in params}
        if len(self._params) != len(params):
            raise ValueError("a param is declared twice")
        self._defaults = {p.name: p.default for p in params}
        self._required = tuple(p for p in params if p.required)
        self.open = open  # take undeclared names as they are (only for echo-like tests)

    @property
    def names(self) -> list[str]:
        return list(self._params)

    @property
    def optional(self) -> bool:
        """Can the method be called with no params at all?"""
        return not self._required

    def describe(self) -> list[dict[str, Any]]:
        """Each param's plain-data description, in declaration order."""
        return [p.describe() for p in self._params.values()]

    def parse(self, raw: Mapping[str, Any] | None, where: str = "params") -> dict[str, Any]:
        """The checked params, or MethodError("bad_params") naming the first bad one."""
        if raw is None or (type(raw) is dict and not raw):
            if self._required:
                raise self._missing(self._required[0], where)
            return self._defaults.copy()  # the common case (ping, status): no loop
        if type(raw) is not dict and not isinstance(raw, Mapping):
            raise MethodError("bad_params", f"{where} must be a map")
        out = self._defaults.copy()
        declared = self._params
        for key, value in raw.items():
            param = declared.get(key)
            if param is None:
                if self.open:
                    out[key] = value
                    continue
                raise self._unknown(key, where)
            if value is None and not param.nullable:
                continue  # null: not given
            out[key] = param.check(value, where)
        for param in self._required:
            if param.name not in raw or (raw[param.name] is None and not param.nullable):
                raise self._missing(param, where)
        return out

    def _unknown(self, key: Any, where: str) -> MethodError:
        name = key if isinstance(key, str) else repr(key)
        takes = ", ".join(self._params) or "no params"
        return MethodError("bad_params",
                           f"{where}.{name} is not a parameter of this method (it takes: {takes})")

    @staticmethod
    def _missing(param: Param, where: str) -> MethodError:
        what = "a value (null is one)" if param.nullable else param.what
        return MethodError("bad_params", f"{where}.{param.name} is required: {what}")


def accepts(*params: Param, open: bool = False, mutates: Mutates = None) -> Callable[[F], F]:
    """Declare the params of the handler it decorates (the handler itself is unchanged);
    `mutates` says what it changes (see the module docstring)."""
    spec = Params(*params, open=open, mutates=mutates)

    def declare(handler: F) -> F:
        setattr(handler, _PARAMS_ATTR, spec)
        return handler
    return declare


def params_of(handler: Callable[..., Any]) -> Params | None:
    """The params `handler` declared with `accepts`, or None if it declared none."""
    return getattr(handler, _PARAMS_ATTR, None)
