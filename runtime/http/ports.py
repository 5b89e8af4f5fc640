"""What the HTTP face is given, and the shape of what it gets back.

`Call` is its only way to act on the runtime: the control methods, in process
(at merge, `Methods.call` with an http Caller). A `Pane` is how another room
(rules, jobs, rollouts) adds a section to the console page.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from runtime.control import Table

Call = Callable[[str, Mapping[str, Any]], Awaitable[Any]]
"""`await call("status", {})` answers plain data, a Table, or a control Stream
(events.follow: consume its `.items`); a refusal raises MethodError."""


class Pane(Protocol):
    """A section of the console page that another room contributes (rules, jobs, rollouts).

    `render` returns an HTML fragment (the pane escapes what it shows) built from
    what the control methods answer; the page shows it server-side and the
    browser re-fetches it from /partial/<name> whenever a lifecycle event arrives.
    """

    name: str
    title: str

    async def render(self, call: Call) -> str: ...


def plain(value: Any) -> Any:
    """JSON-ready data from a control method's answer (a Table becomes a list of maps)."""
    if isinstance(value, Table):
        return [dict(zip(value.columns, row, strict=True)) for row in value.rows]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

