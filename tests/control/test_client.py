"""The blocking client's own guarantees: a silent runtime is a TimeoutError after
`timeout`, not a hang and not a raw BlockingIOError from the kernel timeout."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from runtime.control import ControlClient, NotRunningError


def test_a_runtime_that_never_answers_times_out(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)  # connects succeed (the backlog), nobody ever reads or answers
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"did not answer within 0\.3 s"):
            ControlClient(path, timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 5
    finally:
        listener.close()


def test_no_socket_is_not_running(tmp_path: Path) -> None:
    with pytest.raises(NotRunningError, match="no outpost runtime answers"):
        ControlClient(tmp_path / "absent.sock", timeout=0.3)
