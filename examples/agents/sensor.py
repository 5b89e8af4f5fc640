"""Example process agent: samples the load average into durable state, in its own process.

It runs in a child process forked from the runtime's template, with the same
`ctx` as a task agent: state writes are acknowledged once durable, heartbeats
and metrics go straight to shared memory. A crash or leak here cannot hurt the
runtime; the supervisor restarts it.
"""

import os

import trio


async def run(ctx):
    samples = ctx.metrics.counter("samples")
    load = ctx.metrics.gauge("load1")
    ctx.log.info("sensor pid %d resumes after %s samples", os.getpid(),
                 ctx.state.get("samples", 0))
    ctx.ready()  # the agents that depend on this one may start now
    while True:
        one, five, fifteen = os.getloadavg()
        load.set(one)
        await ctx.state.merge("load", {"1m": one, "5m": five, "15m": fifteen})
        await ctx.state.incr("samples")
        samples.inc()
        ctx.heartbeat()
        await trio.sleep(1.0)
