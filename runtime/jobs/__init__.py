"""Scheduled jobs inside the runtime: cron or interval schedules, durable run history.

`Scheduler` runs [[jobs]]: entry functions (like a task agent), commands (output to
the job's log) or maintenance tasks (through the `maintain` control method, which
holds the same lock as cron's `outpost maintain`). It talks to the rest of the
runtime through the ports in runtime.jobs.ports, never through the supervisor.
"""
