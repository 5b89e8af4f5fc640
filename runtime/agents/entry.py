"""Finding an agent's `run(ctx)` from its config entry."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

AgentMain = Callable[[Any], Awaitable[None]]


class EntryError(Exception):
    """The entry cannot be loaded: the message names it and says why."""


def load_entry(entry: str) -> AgentMain:
    """Import `module:function` or `/path/file.py:function` and return the function.

    A file is executed afresh each call, so a restarted agent picks up an edited
    file; modules are imported once by Python's import system.
    """
    target, _, func_name = entry.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            name = f"outpost_agent_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise EntryError(f"agent entry {entry!r}: no such file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except EntryError:
        raise
    except Exception as exc:
        raise EntryError(f"agent entry {entry!r} failed to import: {exc!r}") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise EntryError(f"agent entry {entry!r}: {target} has no function {func_name!r}")
    return func
