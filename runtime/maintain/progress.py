"""How long work shows that it is alive: the progress callback and a ticker thread.

Light on purpose (no store, no trio): the CLI uses it while a task runs inside
the runtime, before anything else of maintenance is imported.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

# progress(done, total, label); total == 0 means "no measure, only time passes".
Progress = Callable[[int, int, str], None]


@contextlib.contextmanager
def reporting(report: Callable[[], None], every: float = 0.2) -> Iterator[None]:
    """Call `report()` from a thread every `every` seconds while the block runs: for
    work that gives no progress of its own (an LMDB copy, a task inside the runtime)."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every):
            report()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
