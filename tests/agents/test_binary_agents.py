"""In the one-file binary: process agents forked from the template (no re-exec), exec agents
without PyInstaller's LD_LIBRARY_PATH, and no agent left after kill -9 + restart."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from tests.runtime_proc import RuntimeProc, wait_for, write_config

pytestmark = pytest.mark.binary

AGENT = '''
import os, sys, trio

async def run(ctx):
    print(f"frozen={getattr(sys, 'frozen', False)} exe={sys.executable}", flush=True)
    ctx.ready()
    while True:
        await ctx.state.incr("count")
        ctx.heartbeat()
        await trio.sleep(0.05)
'''



def test_process_and_exec_agents_in_the_binary(binary: Path, tmp_path: Path,
                                               runtimes: list) -> None:
    (tmp_path / "pagent.py").write_text(AGENT)
    agents = ('[[agents]]\nname = "p"\nkind = "process"\nentry = "pagent.py:run"\n'
              '[[agents]]\nname = "e"\nkind = "exec"\ndepends_on = ["p"]\n'
              'command = ["sh", "-c", "echo LD=${LD_LIBRARY_PATH:-unset}; exec sleep 3600"]\n')
    config = write_config(tmp_path, agents)
    rt = RuntimeProc(config, [str(binary)]).start()
    runtimes.append(rt)
    rt.wait_running("e", timeout=60)
    rows = {r["name"]: r for r in rt.try_status()["agents"]}
    runtime_python = psutil.Process(rt.proc.pid).children()[0]  # the bootloader's child
    template = psutil.Process(rows["p"]["pid"]).parent()
    # Forked from the runtime's Python process: the template is its child, same exe.
    assert template.ppid() == runtime_python.pid
    assert template.exe() == runtime_python.exe()
    logs = tmp_path / "var" / "log"
    wait_for(lambda: (logs / "p.log").exists() and "frozen=True" in (logs / "p.log").read_text()
             and (logs / "e.log").exists() and "LD=" in (logs / "e.log").read_text(),
             what="agents' output")
    assert "_MEI" not in (logs / "e.log").read_text()
    count = json.loads(rt.cli("state", "get", "p", "count", "--json").stdout)["value"]
    assert count >= 1
    old = [rows["p"]["pid"], rows["e"]["pid"]]
    rt.kill9()
    rt2 = RuntimeProc(config, [str(binary)]).start()
    runtimes.append(rt2)
    rt2.wait_running("p", timeout=60)

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    wait_for(lambda: all(gone(p) for p in old), timeout=10, what="old agents gone")
    assert rt2.terminate() == 0
