"""Local control: a sans-IO protocol, a thin trio server, and a blocking client."""

from runtime.control.client import ControlClient, NotRunningError, RemoteError
from runtime.control.protocol import Connection, ProtocolError, Table
from runtime.control.server import ControlServer, Limits, MethodError, Stream

__all__ = [
    "Connection",
    "ControlClient",
    "ControlServer",
    "Limits",
    "MethodError",
    "NotRunningError",
    "ProtocolError",
    "RemoteError",
    "Stream",
    "Table",
]
