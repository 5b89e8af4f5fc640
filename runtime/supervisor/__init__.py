"""Supervision: a tree of groups and agents, restarted by strategy, stopped in reverse."""

from runtime.supervisor.errors import (
    InvalidReloadError,
    RootGaveUp,
    SupervisorError,
    UnknownAgentError,
)
from runtime.supervisor.policy import Exit, next_backoff
from runtime.supervisor.supervisor import Supervisor
from runtime.supervisor.tree import Child, Group

__all__ = ["Child", "Exit", "Group", "InvalidReloadError", "RootGaveUp", "Supervisor",
           "SupervisorError", "UnknownAgentError", "next_backoff"]
