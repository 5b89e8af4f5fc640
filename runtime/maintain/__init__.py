"""Maintenance that cron runs: checkpoint, prune, compact, archive, verify, backup,
restore, disk. Inside a live runtime through the control socket (one LMDB writer),
or offline under the data-dir lock.

Import the submodule you need: `outpost maintain` imports `runner` (and through
it `catalog`) before it knows whether a runtime answers, so this package
imports nothing that would pull in trio or the store.
"""
