"""The schema is the section dataclasses: every field is a checked key with one default."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runtime.config import ConfigError, parse_config
from runtime.config.schema import ARRAYS, SECTIONS, AgentSpec, keys_of, required_keys


@pytest.mark.parametrize("cls", [*SECTIONS.values(), *ARRAYS.values()],
                         ids=lambda c: c.__name__)
def test_every_field_is_a_checked_key(cls: type) -> None:
    assert set(keys_of(cls)) == {f.name for f in dataclasses.fields(cls)
                                 if "derived" not in f.metadata}


def test_only_names_are_required() -> None:
    assert {cls.__name__: required_keys(cls) for cls in (*SECTIONS.values(), *ARRAYS.values())
            if required_keys(cls)} == {"AgentSpec": {"name"}, "GroupSpec": {"name"}}


def test_an_empty_file_gets_the_dataclass_defaults(tmp_path: Path) -> None:
    config = parse_config({}, tmp_path / "outpost.toml")
    for name, cls in SECTIONS.items():
        if hasattr(config, name):
            expected = cls()
            if name == "maintain":
                expected = dataclasses.replace(
                    expected, archive_dir=(tmp_path / "var/archive").resolve(),
                    logs_dir=(tmp_path / "var/log").resolve())
            assert getattr(config, name) == expected
    assert config.data_dir == (tmp_path / "var/data").resolve()
    assert config.shm_slots == SECTIONS["shm"]().slots


def test_an_agent_gets_the_spec_defaults(tmp_path: Path) -> None:
    config = parse_config({"agents": [{"name": "a", "entry": "m:f"}]}, tmp_path / "x.toml")
    assert config.agents == (AgentSpec(name="a", entry="m:f"),)


def test_a_wrong_type_names_the_key_and_what_it_expects(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"supervisor\.max_restarts: expected an integer"):
        parse_config({"supervisor": {"max_restarts": "many"}}, tmp_path / "x.toml")


def test_the_store_section_defaults_are_the_store_s_own() -> None:
    from runtime.config.schema import StoreSection
    from runtime.store import StoreOptions

    assert StoreOptions.of(StoreSection()) == StoreOptions()
    assert StoreOptions.of(StoreSection(durability="interval", max_batch=7)) == StoreOptions(
        durability="interval", max_batch=7)
