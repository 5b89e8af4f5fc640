"""Finding an agent's `run(ctx)` from its config entry."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

AgentMain = Callable[[Any], Awaitable[None]]

_code_cache: dict[Path, tuple[tuple[int, int, int], CodeType]] = {}


class EntryError(Exception):
    """The entry cannot be loaded: the message names it and says why."""


def load_entry(entry: str) -> AgentMain:
    """Import `module:function` or `/path/file.py:function` and return the function.

    A file is executed afresh each call into a new module, so a restarted agent
    gets fresh module globals and picks up an edited file. Only the compiled code
    is cached (keyed by the file's mtime, size and inode): a restart then skips
    finding, reading and unmarshalling it (~150 us of a sub-millisecond restart).
    Modules are imported once by Python's import system.
    """
    target, _, func_name = entry.rpartition(":")
    try:
        if target.endswith(".py"):
            module = _exec_file(Path(target), entry)
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


def _exec_file(path: Path, entry: str) -> ModuleType:
    try:
        st = path.stat()
    except OSError:
        raise EntryError(f"agent entry {entry!r}: no such file {path}") from None
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _code_cache.get(path)
    if cached is None or cached[0] != key:
        code = compile(path.read_bytes(), str(path), "exec")
        _code_cache[path] = cached = (key, code)
    name = f"outpost_agent_{path.stem}"
    module = ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # tracebacks, dataclasses and typing look modules up here
    exec(cached[1], module.__dict__)  # noqa: S102 - the agent's own code, from its config
    return module
