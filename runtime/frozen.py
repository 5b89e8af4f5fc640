"""Behaviour specific to the one-file binary (PyInstaller onefile)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from runtime.exitcodes import EXIT_FAILED

_PR_SET_PDEATHSIG = 1


def bind_to_bootloader() -> None:
    """In a onefile binary, die with the bootloader process that started us.

    The binary's pid belongs to PyInstaller's bootloader, which runs Python as a
    child. `kill -9` of the bootloader cannot be forwarded, so without this the
    child would keep running (and keep the data-dir lock) as an orphan.
    """
    if not getattr(sys, "frozen", False) or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the bootloader died before prctl took effect
        os._exit(EXIT_FAILED)
