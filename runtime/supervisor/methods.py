"""The supervisor's own control methods: degrade an agent, run an agent from a release.

`agent.degrade` is the brake rules pull on a misbehaving agent; it is not held
per agent (a brake is never answered busy) but is a mutation like any other:
request id, audit event. `agent.release` is what a rollout uses to switch an
agent (or some of its instances) to a release and back.
"""

from __future__ import annotations

from typing import Any

from runtime.control.dispatch import Handler
from runtime.control.errors import MethodError
from runtime.control.params import Bool, Map, Str, accepts
from runtime.supervisor.errors import SupervisorError, UnknownAgentError
from runtime.supervisor.overrides import ReleaseOverride
from runtime.supervisor.supervisor import Supervisor


def supervisor_methods(supervisor: Supervisor) -> dict[str, Handler]:
    """agent.degrade and agent.release over `supervisor`."""

    @accepts(Str("agent", required=True, doc="an agent or group name"),
             Str("reason", max_len=500, default="degraded by request", doc="why (an event "
                 "and the status say it)"),
             mutates=True)
    async def degrade(params: dict[str, Any]) -> dict:
        """Stop an agent and keep it stopped, marked degraded, its state kept, until it is
        started or restarted."""
        name = params["agent"]
        try:
            await supervisor.degrade_agent(name, params["reason"])
        except UnknownAgentError as exc:
            raise MethodError("not_found", str(exc)) from None
        except SupervisorError as exc:
            raise MethodError("failed", str(exc)) from None
        return {"agent": name, "degraded": True, "reason": params["reason"]}

    @accepts(Str("agent", required=True, doc="an agent, or an agent with instances"),
             Map("release", doc="{release, root, digest, entry | program}; without it: the "
                 "config's own code again"),
             Bool("restart", default=False, doc="restart the agent(s) now, else at their "
                  "next start"),
             mutates="agent")
    async def use_release(params: dict[str, Any]) -> dict:
        """Run an agent (or every instance without its own) from a release, verified
        before every start; without a release, from the config's code again."""
        name, raw = params["agent"], params["release"]
        try:
            override = None if raw is None else ReleaseOverride.from_params(raw)
        except ValueError as exc:
            raise MethodError("bad_params", f"params.{exc}") from None
        try:
            names = supervisor.use_release(name, override)
            if params["restart"]:
                for each in names:
                    if supervisor.find(each) is not None:
                        await supervisor.restart_agent(each)
        except UnknownAgentError as exc:
            raise MethodError("not_found", str(exc)) from None
        except SupervisorError as exc:
            raise MethodError("failed", str(exc)) from None
        return {"agent": name, "agents": names,
                "release": None if override is None else override.release}

    return {"agent.degrade": degrade, "agent.release": use_release}
