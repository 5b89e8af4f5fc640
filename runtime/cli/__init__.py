"""The `outpost` command line: `run` starts a runtime; every other command is a client."""
