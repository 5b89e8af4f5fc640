"""The example agent: counts durably, beats its heartbeat, bumps a shared-memory counter."""

import trio


async def run(ctx):
    ticks = ctx.metrics.counter("ticks")
    ctx.log.info("counter resumes at %s", ctx.state.get("count", 0))
    ctx.ready()
    while True:
        # Returns only after the increment is durable (fsynced group commit).
        await ctx.state.incr("count")
        ctx.heartbeat()
        ticks.inc()
        await trio.sleep(0.1)
