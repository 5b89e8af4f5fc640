"""Test agent: writes the metrics `outpost top` shows, and reacts to control writes.

Every tick: one durable state write (counted in `state_writes`), one message
"in" and two "out" (shared-memory counters), a heartbeat. A control
`state set busy echo_in X` is copied to `echo_out` (so a test sees the agent
itself read the value), and `state set busy crash true` makes it raise once
(so a test can cause lifecycle events on demand).
"""

import trio


async def run(ctx):
    writes = ctx.metrics.counter("state_writes")
    msg_in = ctx.metrics.counter("messages_in")
    msg_out = ctx.metrics.counter("messages_out")
    ctx.ready()
    while True:
        await ctx.state.incr("ticks")
        writes.inc()
        msg_in.inc()
        msg_out.add(2)
        if "echo_in" in ctx.state and ctx.state.get("echo_out") != ctx.state.get("echo_in"):
            await ctx.state.set("echo_out", ctx.state.get("echo_in"))
            writes.inc()
        if ctx.state.get("crash"):
            await ctx.state.delete("crash")
            raise RuntimeError("crash requested through the control socket")
        ctx.heartbeat()
        await trio.sleep(0.02)
