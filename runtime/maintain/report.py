"""What a maintenance task tells its caller: ok or not, a summary, the problems found."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TaskResult:
    """One task's outcome. `problems` name each thing wrong; any problem means not ok."""

    task: str
    summary: str = ""
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class MaintainError(Exception):
    """A task cannot run at all (bad arguments, missing backup, refused restore)."""
