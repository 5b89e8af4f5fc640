"""Which maintenance tasks exist and how they are called: plain names, no machinery.

The CLI checks a command line against this before it knows whether a runtime
is running, so it imports nothing (no trio, no store); `tasks` holds the
task functions under the same names.
"""

ONLINE = ("checkpoint", "prune", "compact", "archive", "verify", "backup", "disk",
          "metrics-textfile")
OFFLINE_ONLY = frozenset({"restore"})  # never inside a running runtime
ALL_TASKS = (*ONLINE, *sorted(OFFLINE_ONLY))
# A folder (backup, restore) or a file (metrics-textfile) follows the task's name.
TAKES_ARG = frozenset({"backup", "restore", "metrics-textfile"})
ROUTINE = ("checkpoint", "prune", "archive", "disk")  # what `outpost maintain` alone runs
