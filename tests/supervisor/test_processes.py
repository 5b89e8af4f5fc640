"""process and exec agents with real processes and signals, forked by a real template."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from runtime.agents import state_stream
from runtime.config import AgentSpec
from runtime.config.schema import SupervisorSection
from runtime.supervisor.template import Template
from tests.supervisor.harness import fixture, gone, running, zombies_of

CTRL = fixture("controlled.py")


def proc(tmp: Path, name: str, entry: str = CTRL, **kw) -> AgentSpec:
    env = {"OUTPOST_TEST_DIR": str(tmp), **dict(kw.pop("env", {}))}
    return AgentSpec(name=name, entry=entry, kind="process", env=tuple(env.items()), **kw)


async def test_process_agent_has_the_same_ctx_durable_state_and_mail(
        tmp_path: Path, template: Template) -> None:
    async with running(tmp_path, [proc(tmp_path, "p_auto")], template=template) as h:
        await h.until(lambda: h.state("p_auto") == "running" and h.of("ready", "p_auto"))
        row = h.sup.status()[0]
        assert row["kind"] == "process" and row["pid"] != os.getpid()
        assert psutil.Process(row["pid"]).ppid() == template.pid
        assert os.getpgid(row["pid"]) == row["pid"]  # its own process group
        # State written by the agent process, through the runtime, durably.
        state = await h.book.open(state_stream("p_auto"))
        assert state.get("starts") == 1
        # Mail: idempotent sends, delivered once; the agent acks it (then crashes).
        first = await h.mailboxes.send("p_auto", "crash", key="k1")
        assert await h.mailboxes.send("p_auto", "crash", key="k1") == first
        await h.until(lambda: len(h.of("start", "p_auto")) == 2, what="restart")
        await h.until(lambda: state.get("starts") == 2)
        exit = h.of("exit", "p_auto")[0]
        assert exit["code"] == 1 and exit["exception"] == "RuntimeError: crash requested"
        assert h.of("restart", "p_auto")[0]["delay_s"] == 0.0
        # Heartbeats come straight through shared memory.
        await h.until(lambda: (h.sup.status()[0]["heartbeat_age_s"] or 9) < 1)
        # Delivered once: the second send with key k1 did not cause a third start.
        await h.send("p_auto", "ready")
        await h.until(lambda: h.sup.find("p_auto").ready.is_set())
        assert len(h.of("start", "p_auto")) == 2
        seg = h.segment
        assert seg.find("p_auto:state_writes") is not None


async def test_segfault_is_contained_and_reported(tmp_path: Path, template: Template) -> None:
    agent = tmp_path / "segv.py"
    agent.write_text("import ctypes\n\nasync def run(ctx):\n    ctypes.string_at(0)\n")
    async with running(tmp_path, [proc(tmp_path, "segv", f"{agent}:run", max_restarts=2)],
                       template=template) as h:
        await h.until(lambda: h.state("segv") == "failed", what="failed after segfaults")
        exits = h.of("exit", "segv")
        assert len(exits) == 3 and all(e["signal"] == 11 for e in exits)
        assert exits[0]["summary"] == "killed by SIGSEGV"


async def test_zero_zombies_after_200_crash_restart_cycles(tmp_path: Path,
                                                           template: Template) -> None:
    await crash_cycles(tmp_path, template, 200)


@pytest.mark.soak
async def test_zero_zombies_and_no_fd_leak_after_2000_cycles(tmp_path: Path,
                                                             template: Template) -> None:
    await crash_cycles(tmp_path, template, 2000)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def crash_cycles(tmp_path: Path, template: Template, cycles: int) -> None:
    spec = proc(tmp_path, "c", fixture("crash_now.py"), max_restarts=10**6)
    most_zombies = 0
    fds_before = open_fds()

    def cycles_done(h) -> bool:
        nonlocal most_zombies
        most_zombies = max(most_zombies, len(zombies_of(template.pid)))
        return len(h.of("exit", "c")) >= cycles
    async with running(tmp_path, [spec], root=SupervisorSection(max_restarts=10**6),
                       template=template) as h:
        await h.until(lambda: cycles_done(h), timeout=90 * cycles / 200, what="cycles")
        pids = {e["pid"] for e in h.of("start", "c")}
    assert len(pids) >= cycles
    # Pipes, sockets and pidfds of every instance were closed: a leak would add one or
    # more per cycle; a few are opened once by libraries on first use.
    assert open_fds() - fds_before < 10, (fds_before, open_fds())
    # Reaped promptly: at any moment at most the one that just exited awaits its reaping...
    assert most_zombies <= 1, most_zombies
    # ...and in the end every one of them is reaped: no zombie, none left at all.
    deadline = time.monotonic() + 2
    while (zombies_of(template.pid) or any(psutil.pid_exists(p) for p in pids)) \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    assert zombies_of(template.pid) == [] and zombies_of(os.getpid()) == []
    assert [p for p in pids if psutil.pid_exists(p)] == []


async def test_grandchildren_are_gone_after_stop(tmp_path: Path, template: Template) -> None:
    spec = proc(tmp_path, "forker", fixture("forker.py"), shutdown_timeout_s=1)
    pids_file = tmp_path / "forker.pids"
    async with running(tmp_path, [spec], template=template) as h:
        await h.until(lambda: pids_file.exists(), what="pids written")
        pids = [int(p) for p in pids_file.read_text().split()]
        assert all(psutil.pid_exists(p) for p in pids)
        assert os.getpgid(pids[3]) != os.getpgid(pids[0])  # one escaped the group
        await h.sup.stop_agent("forker")
        assert h.state("forker") == "stopped"
    deadline = time.monotonic() + 10
    while not all(gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [p for p in pids if not gone(p)] == []
    assert zombies_of(template.pid) == []


async def test_hung_agent_is_killed_and_restarted_within_timeout_plus_100ms(
        tmp_path: Path, template: Template) -> None:
    spec = proc(tmp_path, "hang_auto", heartbeat_timeout_s=0.5)
    async with running(tmp_path, [spec], template=template) as h:
        await h.until(lambda: h.of("ready", "hang_auto"))
        await h.send("hang_auto", "hang")
        await h.until(lambda: len(h.of("start", "hang_auto")) == 2, what="restart after hang")
        hung_at = float(next(line for line in h.starts("hang_auto") if line[0] == "hang")[1])
        breach = h.of("health", "hang_auto")[0]
        assert breach["breach"] == "heartbeat"
        # The agent's last beat was at most 50 ms before it hung.
        assert breach["t"] - hung_at <= 0.5 + 0.1, breach["t"] - hung_at
        assert breach["t"] - hung_at >= 0.5 - 0.06
        exit = h.of("exit", "hang_auto")[0]
        assert exit["signal"] == 9 and "heartbeat" in exit["summary"]


async def test_task_agent_heartbeat_timeout_and_max_runtime(tmp_path: Path) -> None:
    # A task agent that never beats again after start, and one with a max runtime.
    quiet = tmp_path / "quiet.py"
    quiet.write_text("import trio\n\nasync def run(ctx):\n    ctx.heartbeat()\n"
                     "    await trio.sleep_forever()\n")
    specs = [AgentSpec(name="quiet", entry=f"{quiet}:run", heartbeat_timeout_s=0.3),
             AgentSpec(name="bounded", entry=f"{quiet}:run", max_runtime_s=0.4)]
    async with running(tmp_path, specs) as h:
        await h.until(lambda: h.of("health", "quiet") and h.of("health", "bounded"))
        q, b = h.of("health", "quiet")[0], h.of("health", "bounded")[0]
        assert q["breach"] == "heartbeat" and b["breach"] == "max_runtime"
        start_q, start_b = h.of("start", "quiet")[0]["t"], h.of("start", "bounded")[0]["t"]
        assert 0.3 <= q["t"] - start_q <= 0.4
        assert 0.4 <= b["t"] - start_b <= 0.5
        await h.until(lambda: len(h.of("start", "quiet")) >= 2 and
                      len(h.of("start", "bounded")) >= 2)


async def test_memory_hog_is_killed(tmp_path: Path, template: Template) -> None:
    spec = proc(tmp_path, "hog", fixture("memhog.py"), memory_max=96 << 20, max_restarts=1)
    async with running(tmp_path, [spec], template=template) as h:
        await h.until(lambda: h.of("health", "hog"), what="memory breach")
        breach = h.of("health", "hog")[0]
        assert breach["breach"] == "memory_max" and breach["value"] > 96 << 20
        await h.until(lambda: len(h.of("exit", "hog")) >= 1)
        assert h.of("exit", "hog")[0]["signal"] == 9
        # Sampled at >= 1 Hz: the breach came within a second of crossing the limit
        # (the hog grows 16 MiB per 50 ms, so the limit is crossed ~0.3 s in).
        assert breach["t"] - h.of("start", "hog")[0]["t"] <= 0.3 + 1.0 + 0.5


async def test_cpu_max_is_enforced_and_usage_is_reported(tmp_path: Path,
                                                         template: Template) -> None:
    spec = proc(tmp_path, "spin", fixture("spinner.py"), cpu_max=30, max_restarts=1)
    async with running(tmp_path, [spec], template=template) as h:
        await h.until(lambda: h.of("health", "spin"), timeout=20, what="cpu breach")
        breach = h.of("health", "spin")[0]
        assert breach["breach"] == "cpu_max" and breach["value"] > 30
        gauge = h.segment.find("spin:cpu_percent")
        assert gauge is not None


async def test_exec_agent_output_sd_notify_and_dependents(tmp_path: Path,
                                                          template: Template) -> None:
    prog = [sys.executable, str(Path(fixture("notifier.py")).parent / "notifier.py")]
    specs = [AgentSpec(name="svc", kind="exec", command=(*prog, "--delay", "0.3"), notify=True,
                       heartbeat_timeout_s=1.0, log_max_bytes=300, log_keep=2),
             AgentSpec(name="after", kind="exec", command=(*prog, "--lines", "30"),
                       depends_on=("svc",), log_max_bytes=300, log_keep=2)]
    async with running(tmp_path, specs, template=template) as h:
        await h.until(lambda: h.of("ready", "svc") and h.state("after") == "running")
        assert h.of("ready", "svc")[0]["via"] == "sd_notify"
        assert h.of("start", "after")[0]["t"] >= h.of("ready", "svc")[0]["t"]
        await h.until(lambda: h.sup.find("svc").status_text == "serving")
        assert [e["status"] for e in h.of("status", "svc")][:2] == ["warming up", "serving"]
        lines = {(e["stream"], e["line"]) for e in h.of("output", "svc")}
        assert ("stdout", "hello on stdout") in lines and ("stderr", "hello on stderr") in lines
        # WATCHDOG=1 keeps the 1 s heartbeat timeout from firing.
        await h.until(lambda: (h.sup.status()[0]["heartbeat_age_s"] or 9) < 0.5)
        await h.until(lambda: len(h.of("output", "after")) >= 32)
        assert h.of("health", "svc") == []
    logs = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert logs == ["after.log", "after.log.1", "after.log.2", "svc.log"]
    assert all(p.stat().st_size <= 300 for p in (tmp_path / "log").iterdir())


async def test_exec_agent_missing_program_and_shutdown_timeout_kill(
        tmp_path: Path, template: Template) -> None:
    specs = [AgentSpec(name="missing", kind="exec", command=("/nonexistent/prog",),
                       max_restarts=0),
             AgentSpec(name="stubborn", kind="exec", shutdown_timeout_s=0.3,
                       command=("sh", "-c", "trap '' TERM; echo up; while :; do sleep 1; done"))]
    async with running(tmp_path, specs, template=template) as h:
        await h.until(lambda: h.state("missing") == "failed")
        assert h.of("exit", "missing")[0]["code"] == 127
        await h.until(lambda: any("cannot execute" in e["line"]
                                  for e in h.of("output", "missing")))
        await h.until(lambda: h.of("output", "stubborn"))
        t0 = time.monotonic()
        await h.sup.stop_agent("stubborn")
        took = time.monotonic() - t0
        assert 0.3 <= took <= 3, took
        assert h.of("kill", "stubborn")[0]["reason"] == "shutdown timeout"
        assert h.of("exit", "stubborn")[-1]["signal"] == 9


@pytest.mark.parametrize("n", [1])
async def test_unknown_agent_in_a_send_is_an_error(tmp_path: Path, n: int) -> None:
    from runtime.agents.mailbox import MailboxError
    async with running(tmp_path, []) as h:
        with pytest.raises(MailboxError, match="no agent named 'nobody'"):
            await h.mailboxes.send("nobody", "x")


async def test_a_garbage_frame_kills_the_agent_not_the_runtime(tmp_path: Path,
                                                              template: Template) -> None:
    agent = tmp_path / "liar.py"
    agent.write_text("async def run(ctx):\n"
                     "    await ctx._channel._stream.send_all(b'\\xff\\xff\\xff\\xff')\n"
                     "    import trio\n    await trio.sleep_forever()\n")
    async with running(tmp_path, [proc(tmp_path, "liar", f"{agent}:run", max_restarts=0),
                                  proc(tmp_path, "fine_auto")], template=template) as h:
        await h.until(lambda: h.state("liar") == "failed", what="liar killed")
        assert "frame" in h.of("protocol-error", "liar")[0]["error"]
        # Killed, or gone on its own first: its channel was closed on it.
        assert h.of("exit", "liar")[0]["failed"]
        assert h.state("fine_auto") == "running"


async def test_an_agent_flooding_writes_and_sends_waits_and_loses_nothing(
        tmp_path: Path, template: Template) -> None:
    from runtime.supervisor.channel import CALLS_IN_FLIGHT, STATE_OPS_QUEUED
    writes, sends = 4 * STATE_OPS_QUEUED, 2 * CALLS_IN_FLIGHT
    agent = tmp_path / "flood.py"
    agent.write_text(
        "import trio\n\n"
        "async def run(ctx):\n"
        "    async with trio.open_nursery() as nursery:\n"
        f"        for i in range({writes}):\n"
        "            nursery.start_soon(ctx.state.set, f'k{i}', i)\n"
        f"        for i in range({sends}):\n"
        "            nursery.start_soon(ctx.send, ctx.name, i)\n"
        "    ctx.ready()\n"
        "    await trio.sleep_forever()\n")
    async with running(tmp_path, [proc(tmp_path, "flood", f"{agent}:run", max_restarts=0)],
                       template=template) as h:
        # Far more requests than the channel queues: the agent's sends wait, then go on.
        await h.until(lambda: h.sup.find("flood").ready.is_set(), timeout=60,
                      what="every write and send acknowledged")
        state = await h.book.open(state_stream("flood"))
        assert {k: state.get(k) for k in state.to_dict()} == {f"k{i}": i for i in range(writes)}
        assert len(h.mailboxes.store.read("agent/flood/inbox")) == sends
        assert h.of("protocol-error") == [] and len(h.of("start", "flood")) == 1
