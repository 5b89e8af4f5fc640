"""Local control: a sans-IO protocol, a thin trio server, and a blocking client.

Importing this package (or any of client, protocol, errors, dispatch, params)
does not import trio, so a client command pays nothing for the server: the
runtime imports `runtime.control.server` itself.
"""

from runtime.control.client import ControlClient, NotRunningError, RemoteError
from runtime.control.errors import MethodError
from runtime.control.protocol import Connection, ProtocolError, Table

__all__ = [
    "Connection",
    "ControlClient",
    "MethodError",
    "NotRunningError",
    "ProtocolError",
    "RemoteError",
    "Table",
]
