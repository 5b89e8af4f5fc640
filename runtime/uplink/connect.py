"""Connecting to NATS as [uplink] says: servers, one way to log in, TLS.

Shared by the room (which reconnects on its own, with capped backoff and jitter, so
every connection starts with an empty client buffer: see `link`), the fleet CLI and
the backups. Imports nats-py only inside `connect`.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from runtime.uplink.errors import UplinkError


def tls_context(ca_file: Path | None, cert_file: Path | None,
                key_file: Path | None) -> ssl.SSLContext:
    """A client TLS context verifying the server (against `ca_file` or the system CAs)."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if cert_file is not None:
            ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise UplinkError(f"[uplink.tls]: cannot load the TLS files: {exc}") from None
    return ctx


def connect_options(*, servers: list[str] | tuple[str, ...], name: str,
                    creds_file: Path | None = None, nkey_file: Path | None = None,
                    user: str | None = None, password: str | None = None,
                    token: str | None = None, ca_file: Path | None = None,
                    cert_file: Path | None = None, key_file: Path | None = None,
                    handshake_first: bool = False, connect_timeout: float = 5.0,
                    reconnect: bool = False) -> dict[str, Any]:
    """Keyword arguments for `nats.connect`. `reconnect=False`: the caller reconnects
    itself (a closed client is never reused)."""
    for label, path in (("creds_file", creds_file), ("nkey_file", nkey_file)):
        if path is not None and not Path(path).is_file():
            raise UplinkError(f"[uplink] {label} {path}: no such file")
    opts: dict[str, Any] = {
        "servers": list(servers), "name": name, "connect_timeout": connect_timeout,
        # nats-py reads 0 attempts as "retry forever"; 1 is two tries per server, then
        # NoServersError, back to our own backoff.
        "allow_reconnect": reconnect, "max_reconnect_attempts": 3 if reconnect else 1,
        "reconnect_time_wait": 2 if reconnect else 0,
        # A silent link (a cable pulled, NAT state lost) is noticed within ~30 s.
        "ping_interval": 10, "max_outstanding_pings": 2,
    }
    if creds_file is not None:
        opts["user_credentials"] = str(creds_file)
    if nkey_file is not None:
        opts["nkeys_seed"] = str(nkey_file)
    if user is not None:
        opts["user"], opts["password"] = user, password
    if token is not None:
        opts["token"] = token
    tls_wanted = any(s.startswith("tls://") for s in servers) or \
        any(p is not None for p in (ca_file, cert_file))
    if tls_wanted:
        opts["tls"] = tls_context(ca_file, cert_file, key_file)
        opts["tls_handshake_first"] = handshake_first
    return opts


def section_options(cfg: Any, *, name: str | None = None,
                    reconnect: bool = False) -> dict[str, Any]:
    """`connect_options` from an `UplinkSection`."""
    return connect_options(
        servers=cfg.servers, name=name or f"outpost-{cfg.host_id}", creds_file=cfg.creds_file,
        nkey_file=cfg.nkey_file, user=cfg.user, password=cfg.password, token=cfg.token,
        ca_file=cfg.tls.ca_file, cert_file=cfg.tls.cert_file, key_file=cfg.tls.key_file,
        handshake_first=cfg.tls.handshake_first, connect_timeout=cfg.connect_timeout_s,
        reconnect=reconnect)


async def connect(options: dict[str, Any], **callbacks: Any) -> Any:
    """A connected `nats.aio.client.Client` (asyncio). Errors surface as raised by nats-py."""
    import nats  # the CLI and the runtime pay for nats-py only when they use it

    async def quiet(exc: Exception) -> None:  # nats-py logs every error by default
        pass

    callbacks.setdefault("error_cb", quiet)
    return await nats.connect(**options, **callbacks)
