"""The uplink: store-and-forward to NATS JetStream, commands down, backups off the host.

Its own room beside the supervisor. It reads the store (its outbox stream, the event
log, chosen agents' state streams) and publishes to JetStream; commands coming down
go through the control methods (a `CommandPort`). Nothing else in the runtime knows
NATS exists. Import the modules you need (`runtime.uplink.outbox`, `.uplink`, ...):
this package imports nothing, so the fleet CLI pays only for what it uses.
"""
