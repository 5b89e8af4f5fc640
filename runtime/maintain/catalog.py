"""Which maintenance tasks exist and how they are called: plain names, no machinery.

The CLI checks a command line against this before it knows whether a runtime
is running, so it imports nothing (no trio, no store); `tasks` holds the
task functions under the same names.
"""

ONLINE = ("checkpoint", "prune", "compact", "archive", "verify", "backup", "disk")
OFFLINE_ONLY = frozenset({"restore"})  # never inside a running runtime
ALL_TASKS = (*ONLINE, *sorted(OFFLINE_ONLY))
TAKES_ARG = frozenset({"backup", "restore"})  # a folder follows the task's name
ROUTINE = ("checkpoint", "prune", "archive", "disk")  # what `outpost maintain` alone runs
