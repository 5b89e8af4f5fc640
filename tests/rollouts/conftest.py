"""The rollouts tests share the supervisor tests' template process (forked before trio)."""

from tests.supervisor.conftest import template  # noqa: F401 - a fixture, used by name
