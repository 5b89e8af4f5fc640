"""Supervision: agents started in order, restarted by policy, stopped in reverse."""

from runtime.supervisor.child import Child, next_backoff
from runtime.supervisor.supervisor import Supervisor

__all__ = ["Child", "Supervisor", "next_backoff"]
