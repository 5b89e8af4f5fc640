"""Maintenance that cron runs: checkpoint, prune, compact, archive, verify, backup,
restore, disk. Inside a live runtime through the control socket (one LMDB writer),
or offline under the data-dir lock."""

from runtime.maintain.report import MaintainError, TaskResult
from runtime.maintain.tasks import ROUTINE, TASKS, Maintenance, run_task

__all__ = ["ROUTINE", "TASKS", "MaintainError", "Maintenance", "TaskResult", "run_task"]
