"""The control methods this room contributes (app.py adds them to the one table)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from runtime.uplink.uplink import Uplink

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def handlers(uplink: Uplink) -> dict[str, Handler]:
    """{"uplink": ...}: what `outpost uplink [--json]` shows."""

    async def uplink_status(params: dict[str, Any]) -> dict[str, Any]:
        """The uplink: backlog (messages, bytes), lag, publish rate, drops by kind,
        the link (connected, server, errors, last error) and commands handled."""
        return uplink.stats()

    return {"uplink": uplink_status}
