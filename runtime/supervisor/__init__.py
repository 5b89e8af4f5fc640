"""Supervision: a tree of groups and agents, restarted by strategy, stopped in reverse."""

from runtime.supervisor.child import Child, Exit, next_backoff
from runtime.supervisor.errors import RootGaveUp, SupervisorError, UnknownAgentError
from runtime.supervisor.supervisor import Group, Supervisor

__all__ = ["Child", "Exit", "Group", "RootGaveUp", "Supervisor", "SupervisorError",
           "UnknownAgentError",
           "next_backoff"]
