"""The rollouts room's control methods: deploy, rollback, rollout.status, releases."""

from __future__ import annotations

import os
from typing import Any

from runtime.control.dispatch import Handler, current_caller
from runtime.control.errors import MethodError
from runtime.control.params import Bool, Number, Str, accepts
from runtime.rollouts.room import Rollouts

AGENT = Str("agent", required=True, doc="an agent name (an agent with instances: its name)")


def rollout_methods(room: Rollouts) -> dict[str, Handler]:
    """The handlers of the rollouts room, by method name."""

    @accepts(AGENT,
             Str("path", required=True, max_len=4096,
                 doc="absolute path of the file or folder to deploy (read by the runtime)"),
             Str("version", max_len=64, doc="a label for the release (default: its digest)"),
             Str("entry", max_len=512, doc="what to run inside the release: FILE.py[:FUNCTION] "
                 "(task, process) or a program path (exec); default: the config's file name"),
             Number("gate", lo=0, hi=7 * 86400, doc="seconds the new version must stay "
                    "healthy (default: the agent's gate, else [rollouts] gate)"),
             Bool("force", default=False, doc="deploy a release that was rolled back before"),
             mutates="agent")
    async def deploy(params: dict[str, Any]) -> dict:
        """Copy a file or folder in as a release of an agent and roll it out: state marked,
        the new version started (a canary first for instances), gated, then committed or
        rolled back. Answers once the first step runs the new version."""
        if not os.path.isabs(params["path"]):
            raise MethodError("bad_params", "params.path must be an absolute path (the runtime "
                              "reads it; the CLI makes it absolute)")
        return await room.deploy(params["agent"], params["path"], version=params["version"],
                                 entry=params["entry"], gate_s=params["gate"],
                                 force=params["force"], request_id=params["request_id"],
                                 wait=params["wait"])

    # Not held by the guard: rolling back an active rollout must not wait for it (the
    # rollout holds the agent); rolling back a committed one takes the agent itself.
    @accepts(AGENT, mutates=True)
    async def rollback(params: dict[str, Any]) -> dict:
        """Roll an agent back: an active rollout now (its release marked bad, the state
        restored to the mark), else from its current release to the previous one.
        Answers once every instance runs the older release."""
        return await room.rollback(params["agent"], request_id=params["request_id"],
                                   wait=params["wait"], caller=current_caller())

    @accepts(Str("agent", doc="only this agent"))
    async def status(params: dict[str, Any]) -> dict:
        """Every agent's current release and latest rollout (or one agent's)."""
        agent = params["agent"]
        if agent is not None:
            room.instances(agent)  # not_found for an unknown agent
            return {"rollouts": [room.describe(room.record(agent))]}
        return {"rollouts": [room.describe(room.record(a)) for a in room.agents()]}

    @accepts(AGENT)
    async def releases(params: dict[str, Any]) -> dict:
        """The kept releases of an agent, oldest first, and which one it runs."""
        agent = params["agent"]
        room.instances(agent)
        return {"agent": agent, "releases": room.list_releases(agent)}

    return {"deploy": deploy, "rollback": rollback, "rollout.status": status,
            "releases": releases}
