"""The exit codes of every `outpost` command, in one place.

Scripts, cron and systemd act on them, so they never change meaning. Plain ints,
importable by anything (the CLI, maintenance, the binary's start-up) without
importing the CLI.
"""

EXIT_OK = 0
EXIT_FAILED = 1  # the operation failed (or a maintenance task found a problem)
EXIT_USAGE = 2  # usage or config error: fix the command line or the file
EXIT_NOT_RUNNING = 3  # no runtime answers; the message says how to start one
EXIT_TEMPFAIL = 75  # EX_TEMPFAIL: the data dir is held by another run; try again later
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
