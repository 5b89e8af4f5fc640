"""Agents: the context they get and how their entry points are found."""

from runtime.agents.context import AgentContext, AgentMetrics, state_stream
from runtime.agents.entry import EntryError, load_entry

__all__ = ["AgentContext", "AgentMetrics", "EntryError", "load_entry", "state_stream"]
