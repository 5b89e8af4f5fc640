"""run_command with real processes: exit codes, output bounds, and the process group
killed at the timeout (and after its leader exits)."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from runtime.jobs.command import command_env, run_command
from tests.rules.helpers import dies


async def test_exit_code_and_output_tail() -> None:
    chunks: list[bytes] = []
    result = await run_command(["/bin/sh", "-c", "echo out; echo err >&2; exit 7"],
                               sink=chunks.append, tail_max=100)
    assert result.code == 7 and not result.ok and not result.timed_out
    assert b"".join(chunks) == result.output
    assert sorted(result.output.split()) == [b"err", b"out"]  # one pipe for both
    assert result.describe() == "exit code 7"
    big = await run_command(["/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x; echo END"],
                            tail_max=10)
    assert big.ok and big.output == b"xxxxxxEND\n"


async def test_a_command_that_cannot_start() -> None:
    result = await run_command(["/nonexistent/tool", "--flag"])
    assert result.code is None and not result.ok
    assert result.error is not None and "cannot start '/nonexistent/tool'" in result.error


async def test_the_whole_group_is_killed_at_the_timeout_even_if_it_ignores_sigterm(
        tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"trap '' TERM\nsleep 1000 &\necho $$ $! > {pids}\nwait\n"
    started = trio.current_time()
    result = await run_command(["/bin/sh", "-c", script], timeout=0.5, kill_grace=0.3)
    assert result.timed_out and not result.ok
    assert result.describe() == "timed out after 0.5s; its process group was killed"
    assert trio.current_time() - started < 10
    shell, child = map(int, pids.read_text().split())
    assert await dies(shell) and await dies(child)


async def test_what_outlives_its_leader_is_killed_and_does_not_hold_the_pipe(
        tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The leader exits at once; its child keeps stdout open and would block a reader.
    result = await run_command(["/bin/sh", "-c", f"sleep 1000 & echo $! > {pids}; echo bye"],
                               timeout=60)
    assert result.ok and result.output == b"bye\n"
    assert result.seconds < 30
    assert await dies(int(pids.read_text()))


async def test_a_daemon_that_leaves_the_group_cannot_keep_the_run_going(
        tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"setsid sleep 1000 & echo $! > {pids}; echo started"
    result = await run_command(["/bin/sh", "-c", script], timeout=60)
    assert result.ok and result.seconds < 30  # stopped reading soon after the leader
    os.kill(int(pids.read_text()), 9)


def test_command_env_adds_to_the_runtimes_environment() -> None:
    env = command_env([("OUTPOST_JOB", "x")])
    assert env["OUTPOST_JOB"] == "x" and env["PATH"] == os.environ["PATH"]
