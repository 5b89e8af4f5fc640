"""Commands that apply once, in real runtimes through the real CLI: the same state set,
send and deploy sent twice (and again after a kill -9 and restart) apply once; the
audit trail names the caller."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.rollouts.versions import wait_phase, wait_start, write_version
from tests.runtime_proc import wait_for, write_config


def cli_json(rt, *args: str) -> dict:
    done = rt.cli(*args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def two_versions(tmp_path: Path, start_runtime, gate: str) -> tuple:
    """A runtime running agent `a` at v1, and v2's file: (runtime, config, log, v1, v2)."""
    log = tmp_path / "versions.log"
    v1 = write_version(tmp_path, "v1", log)
    v2 = write_version(tmp_path, "v2", log)
    config = write_config(tmp_path, f'[[agents]]\nname = "a"\nentry = "{v1}:run"\n',
                          f'[rollouts]\ngate = "{gate}"\n')
    rt = start_runtime(config)
    rt.wait_running("a")
    return rt, config, log, v1, v2


def test_state_set_send_and_deploy_apply_once_also_across_a_restart(
        tmp_path: Path, start_runtime) -> None:
    rt, config, log, _, v2 = two_versions(tmp_path, start_runtime, "0.5s")

    first_set = cli_json(rt, "state", "set", "a", "k", "1", "--request-id", "set-1")
    cli_json(rt, "state", "set", "a", "k", "2")  # another write in between
    assert cli_json(rt, "state", "set", "a", "k", "1", "--request-id", "set-1") == first_set
    assert cli_json(rt, "state", "get", "a", "k")["value"] == 2  # the repeat wrote nothing

    first_send = cli_json(rt, "send", "a", '"hello"', "--request-id", "send-1")
    assert cli_json(rt, "send", "a", '"hello"', "--request-id", "send-1") == first_send
    assert cli_json(rt, "send", "a", '"other"')["seq"] == first_send["seq"] + 1

    first_deploy = cli_json(rt, "deploy", "a", str(v2), "--request-id", "deploy-1")
    assert first_deploy["rollout"]["phase"] == "committed"  # followed to its end
    wait_start(log, "a", "v2")
    assert cli_json(rt, "deploy", "a", str(v2), "--request-id", "deploy-1") == first_deploy
    assert len(cli_json(rt, "releases", "a")["releases"]) == 1

    # The same id for a different request is refused, and says why.
    refused = rt.cli("state", "set", "a", "k", "3", "--request-id", "set-1")
    assert refused.returncode == 1 and "conflict" in refused.stderr

    rt.kill9()
    rt = start_runtime(config)
    rt.wait_running("a")
    assert cli_json(rt, "state", "set", "a", "k", "1", "--request-id", "set-1") == first_set
    assert cli_json(rt, "state", "get", "a", "k")["value"] == 2
    assert cli_json(rt, "send", "a", '"hello"', "--request-id", "send-1") == first_send
    assert cli_json(rt, "send", "a", '"third"')["seq"] == first_send["seq"] + 2
    assert cli_json(rt, "deploy", "a", str(v2), "--request-id", "deploy-1") == first_deploy
    status = cli_json(rt, "rollout", "status", "a")["rollouts"][0]
    assert status["rollout"]["id"] == first_deploy["rollout"]["id"]  # no second rollout

    # The audit trail: each mutation, with who asked (kernel credentials) and its id.
    def sets_of() -> list[dict]:
        audit = cli_json(rt, "events", "--type", "command", "--limit", "1000")["events"]
        return [e for e in audit if e["method"] == "state.set" and e["request_id"] == "set-1"]
    sets = wait_for(lambda: (found := sets_of())[3:] and found, what="4 audit events")
    assert [(e["replayed"], e["outcome"]) for e in sets] == [
        (False, "ok"), (True, "ok"), (False, "conflict"), (True, "ok")]
    assert all(e["caller"] == "socket" and e["uid"] == os.getuid() and e["pid"] > 0
               for e in sets)
    assert all(e["agent"] == "a" for e in sets)


def test_a_mutation_during_a_rollout_is_busy_or_waits_for_its_end(
        tmp_path: Path, start_runtime) -> None:
    rt, _, _, v1, v2 = two_versions(tmp_path, start_runtime, "3s")
    deployed = rt.cli("deploy", "a", str(v2), "--detach")
    assert deployed.returncode == 0, deployed.stderr
    wait_phase(rt, "a", {"gating"})
    for command in (("state", "set", "a", "k", "1"), ("agent", "restart", "a"), ("reload",),
                    ("deploy", "a", str(v1))):
        busy = rt.cli(*command)
        assert busy.returncode == 1 and "busy" in busy.stderr and "rollout" in busy.stderr, \
            (command, busy.stderr)
    waited = rt.cli("state", "set", "a", "k", "1", "--wait", "--json")
    assert waited.returncode == 0, waited.stderr
    with rt.client() as c:
        ro = c.call("rollout.status", agent="a")["rollouts"][0]["rollout"]
    assert ro["phase"] == "committed"  # the write waited for the rollout's end
