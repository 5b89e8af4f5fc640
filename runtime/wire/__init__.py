"""How outpost's peers talk: one framing, one error model, one reply-slot helper.

`framing` turns values into size-limited msgpack frames and back, `errors`
says whose fault a broken conversation is, `connection` is the sans-IO base
with h11's ERROR state, and `pending` (the only module here that imports trio)
holds the request ids tasks wait on. The control protocol, the process-agent
channel and the template's packets are all built from these.
"""
