"""Errors the supervisor raises to its callers (the control methods among them)."""

from __future__ import annotations


class SupervisorError(Exception):
    """A request the supervisor refuses (str() is a full sentence for the user).

    Control methods catch this family by name, never a bare KeyError or ValueError
    (which would turn a bug into a "not found" answer).
    """


class UnknownAgentError(SupervisorError):
    """No agent (or group) by that name. str() is a full sentence for the user."""

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        tail = f" (agents: {', '.join(self.known) or 'none'})" if self.known is not None else ""
        return f"no agent named {self.name!r}{tail}"


class InvalidReloadError(SupervisorError):
    """A reload refused before anything was touched (an unknown group or dependency, a
    dependency cycle or one that starts later)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"reload refused, nothing was changed: {why}")


class RootGaveUp(Exception):
    """The root supervisor exceeded its restart intensity: the runtime stops (non-zero exit)."""
