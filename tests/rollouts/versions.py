"""Versions of one agent for rollout tests, and reading what each version did.

Every version writes a line to a shared log when it starts, with the state it
found (the state at the mark, for a new version; the restored state, for the
old one after a rollback), then keeps writing `ticks` to its state, so a
version that ran during a gate has writes a rollback must discard.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.runtime_proc import wait_for

TEMPLATE = '''
import json, os, time
import trio

VERSION = {version!r}
LOG = {log!r}
CRASH_AFTER = {crash_after!r}      # seconds after start, or None
CRASH_INSTANCE = {crash_instance!r}  # only this instance crashes (None: every one)
SLOW_STOP = {slow_stop!r}          # seconds a stop takes (shielded), or 0
UNHEALTHY_AFTER = {unhealthy_after!r}  # seconds after start to report unhealthy, or None


def note(ctx, what, **fields):
    line = json.dumps({{"agent": ctx.name, "version": VERSION, "what": what,
                       "pid": os.getpid(), **fields}}, sort_keys=True)
    with open(LOG, "a") as f:
        f.write(line + "\\n")


async def run(ctx):
    note(ctx, "start", state=ctx.state.to_dict())
    await ctx.state.set("version", VERSION)
    instance = ctx.name.rpartition("@")[2] if "@" in ctx.name else None
    started = time.monotonic()
    try:
        while True:
            ctx.heartbeat()
            await ctx.state.incr("ticks")
            up = time.monotonic() - started
            if CRASH_AFTER is not None and up >= CRASH_AFTER and (
                    CRASH_INSTANCE is None or instance == str(CRASH_INSTANCE)):
                note(ctx, "crash")
                raise RuntimeError(f"{{VERSION}} crashed on purpose")
            if UNHEALTHY_AFTER is not None and up >= UNHEALTHY_AFTER:
                ctx.report_health(False, f"{{VERSION}} feels unwell")
            await trio.sleep(0.05)
    finally:
        if SLOW_STOP:
            note(ctx, "stopping")
            with trio.CancelScope(shield=True):
                await trio.sleep(SLOW_STOP)
'''


def write_version(directory: Path, version: str, log: Path, *, crash_after: float | None = None,
                  crash_instance: int | None = None, slow_stop: float = 0,
                  unhealthy_after: float | None = None, name: str = "agent.py") -> Path:
    """A file `<directory>/<version>/<name>` holding that version of the agent."""
    folder = directory / version
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(TEMPLATE.format(version=version, log=str(log), crash_after=crash_after,
                                    crash_instance=crash_instance, slow_stop=slow_stop,
                                    unhealthy_after=unhealthy_after))
    return path


def lines(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]


def starts(log: Path, agent: str | None = None, version: str | None = None) -> list[dict]:
    """Start lines, oldest first, of `agent` and/or `version`."""
    return [e for e in lines(log) if e["what"] == "start"
            and (agent is None or e["agent"] == agent)
            and (version is None or e["version"] == version)]


def wait_start(log: Path, agent: str, version: str, count: int = 1,
               timeout: float = 30) -> dict:
    """The `count`-th start line of `agent` running `version` (waits for it)."""
    found = wait_for(lambda: (starts(log, agent, version)[count - 1:] or [None])[0], timeout,
                     f"{agent} started on {version} ({count})")
    return found


def rollout_of(client, agent: str) -> dict:
    return client.call("rollout.status", agent=agent)["rollouts"][0]


def wait_phase(rt, agent: str, phases: set[str], timeout: float = 60) -> dict:
    """The agent's rollout once it is in one of `phases` (waits for it)."""
    def look():
        if rt.proc.poll() is not None:
            raise AssertionError(f"runtime exited {rt.proc.returncode}:\n{rt.log()}")
        with rt.client() as c:
            ro = rollout_of(c, agent)["rollout"]
        return ro if ro is not None and ro["phase"] in phases else None
    return wait_for(look, timeout, f"rollout of {agent} in {sorted(phases)}")
