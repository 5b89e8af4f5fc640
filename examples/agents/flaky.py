"""An example agent that fails on purpose: it works for a few seconds, then raises.

Under examples/autonomy.toml the supervisor restarts it each time, and the
crash-loop rule degrades it after its third failure within a minute.
"""

import trio


async def run(ctx):
    ctx.ready()
    runs = await ctx.state.incr("runs")  # durable: survives the crashes
    ctx.log.info("flaky: run %d, failing in 3 s", runs)
    for _ in range(30):
        ctx.heartbeat()
        await trio.sleep(0.1)
    raise RuntimeError(f"simulated fault (run {runs})")
