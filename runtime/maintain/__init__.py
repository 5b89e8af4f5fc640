"""Maintenance that cron runs (`outpost maintain`): checkpoint, prune, compact, verify, backup.

Not built yet: see the maintenance issue. The store already offers the pieces
(checkpoints with WAL pruning, verified checkpoint loading).
"""
