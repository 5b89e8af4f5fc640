"""Config keys of rollouts and request ids: durations, steps, gate metrics, instances."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ConfigError, parse_config
from runtime.config.schema import RolloutsSection


def load(tmp_path: Path, raw: dict):
    return parse_config(raw, tmp_path / "outpost.toml")


def refused(tmp_path: Path, raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, raw)
    return str(caught.value)


def test_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, {})
    assert config.rollouts == RolloutsSection(60.0, (1, "50%", "100%"), 3)
    assert config.request_id_ttl_s == 24 * 3600


@pytest.mark.parametrize(("text", "seconds"), [
    (90, 90.0), (1.5, 1.5), ("500ms", 0.5), ("60s", 60.0), ("5m", 300.0), ("24h", 86400.0),
    ("7d", 7 * 86400.0), (" 2 h ", 7200.0)])
def test_durations_take_numbers_and_units(tmp_path: Path, text, seconds: float) -> None:
    config = load(tmp_path, {"rollouts": {"gate": text}, "control": {"request_id_ttl": text}})
    assert config.rollouts.gate == seconds == config.request_id_ttl_s


@pytest.mark.parametrize("bad", ["soon", "-1s", "10 minutes", True, [1]])
def test_a_bad_duration_says_what_it_expects(tmp_path: Path, bad) -> None:
    message = refused(tmp_path, {"rollouts": {"gate": bad}})
    assert "rollouts.gate: expected a duration" in message and '"60s"' in message


def test_steps_and_gate_metrics(tmp_path: Path) -> None:
    config = load(tmp_path, {"agents": [
        {"name": "a", "entry": "m:run", "steps": [1, " 25% ", 3], "gate": "10s",
         "gate_metric": "errors below 1"},
        {"name": "b", "entry": "m:run", "gate_metric": "queue.depth > 1e3"}]})
    a, b = config.agents
    assert (a.steps, a.gate, a.gate_metric) == ((1, "25%", 3), 10.0, ("errors", "below", 1.0))
    assert b.gate_metric == ("queue.depth", "above", 1000.0) and b.gate is None
    assert "expected a list of instance counts" in refused(
        tmp_path, {"rollouts": {"steps": [0]}})
    assert "expected a list of instance counts" in refused(
        tmp_path, {"rollouts": {"steps": ["150%"]}})
    assert "gate_metric: expected a bound" in refused(
        tmp_path, {"agents": [{"name": "a", "entry": "m:run", "gate_metric": "errors"}]})


def test_instances_become_a_group_of_named_instances(tmp_path: Path) -> None:
    config = load(tmp_path, {"agents": [
        {"name": "first", "entry": "m:run"},
        {"name": "w", "entry": "m:run", "instances": 3, "env": {"X": "1"}},
        {"name": "after", "entry": "m:run", "depends_on": ["w"]}]})
    names = [a.name for a in config.agents]
    assert names == ["first", "w@1", "w@2", "w@3", "after"]
    w2 = config.agents[2]
    assert (w2.group, w2.instance_of, w2.instances) == ("w", "w", 1)
    assert dict(w2.env) == {"X": "1", "OUTPOST_INSTANCE": "2"}
    (group,) = config.groups
    assert (group.name, group.instances_of, group.parent) == ("w", "w", None)
    assert config.agents[-1].depends_on == ("w@1", "w@2", "w@3")
    # '@' is not allowed in a configured name: an instance's name is never taken.
    assert "expected a name" in refused(tmp_path, {"agents": [{"name": "w@1",
                                                                "entry": "m:run"}]})
    assert "already a group name" in refused(tmp_path, {
        "groups": [{"name": "w"}], "agents": [{"name": "w", "entry": "m:run"}]})
