"""The catalog the CLI checks task names against names exactly the tasks that exist."""

from __future__ import annotations

from runtime.maintain import catalog, tasks


def test_the_catalog_names_every_task_function_and_only_those() -> None:
    assert tuple(tasks.TASKS) == catalog.ONLINE
    assert not catalog.OFFLINE_ONLY & set(catalog.ONLINE)
    assert set(catalog.ALL_TASKS) == set(catalog.ONLINE) | catalog.OFFLINE_ONLY
    assert set(catalog.ALL_TASKS) >= catalog.TAKES_ARG
    assert set(catalog.ROUTINE) <= set(catalog.ONLINE)
