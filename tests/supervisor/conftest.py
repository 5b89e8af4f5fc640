"""A template process shared by the supervisor tests, forked before any test's trio loop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runtime.supervisor.template import Template


@pytest.fixture(scope="session")
def template() -> Iterator[Template]:
    t = Template.start()
    yield t
    t.close()
