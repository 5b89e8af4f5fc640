"""Which agents exist: one directory shared by the supervisor and the mailboxes.

The supervisor replaces its contents whenever its tree is built or reloaded;
the mailboxes ask it whether a recipient exists. Neither layer points back at
the other (nor at the runtime): both hold this object.
"""

from __future__ import annotations

from collections.abc import Iterable

from runtime.config import AgentSpec


class AgentDirectory:
    """The configured agents by name (name -> spec), in config order."""

    def __init__(self, specs: Iterable[AgentSpec] = ()) -> None:
        self._specs: dict[str, AgentSpec] = {}
        self.replace(specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def get(self, name: str) -> AgentSpec | None:
        """The spec of agent `name`, or None if there is no such agent."""
        return self._specs.get(name)

    def names(self) -> list[str]:
        """Every agent's name, in config order."""
        return list(self._specs)

    def replace(self, specs: Iterable[AgentSpec]) -> None:
        """Make `specs` the whole directory (the supervisor calls this on build and reload)."""
        self._specs = {spec.name: spec for spec in specs}
