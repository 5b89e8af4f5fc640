"""`outpost fleet`: the hosts behind a NATS server, from any terminal that reaches it.

    outpost fleet hosts [--json] --server URL
    outpost fleet send HOST METHOD [KEY=VALUE ...] [--params JSON] [--id ID] --server URL

No runtime is needed: this talks to NATS only. `hosts` reads the snapshots every
host puts in the `<stream>_HOSTS` bucket; `send` puts a command on
`<prefix>.<HOST>.cmd` (JetStream keeps it until the host, online or later, takes it)
and waits for the answer. Connection settings come from the flags or from the
[uplink] table of `--config`. nats-py and asyncio are imported only when a command
runs, so the rest of the CLI does not pay for them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any

# The agreed exit codes (0 ok, 1 failed, 2 usage/config).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class FleetError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def add_parsers(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `fleet hosts` and `fleet send` to the CLI's subparsers."""
    fleet = sub.add_parser("fleet", help="hosts on a NATS server: list them, send commands")
    actions = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", action="append", default=None, metavar="URL",
                       help="NATS server URL (repeatable); default: [uplink] servers of --config")
        p.add_argument("--config", default=None,
                       help="take servers, credentials and names from this config's [uplink]")
        p.add_argument("--creds", default=None, help="NATS credentials file")
        p.add_argument("--nkey", default=None, help="NATS nkey seed file")
        p.add_argument("--user", default=None)
        p.add_argument("--password", default=None)
        p.add_argument("--token", default=None)
        p.add_argument("--tls-ca", default=None, help="CA file to verify the server with")
        p.add_argument("--prefix", default=None, help='subject prefix (default "outpost")')
        p.add_argument("--stream", default=None, help='stream name (default "OUTPOST")')
        p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    hosts = actions.add_parser("hosts", help="every host: last seen, version, agents, backlog")
    common(hosts)
    hosts.set_defaults(func=cmd_fleet_hosts)
    send = actions.add_parser("send", help="send a control method to one host and wait for "
                              "its answer")
    send.add_argument("host")
    send.add_argument("method", help="e.g. status, agent.restart, state.get")
    send.add_argument("param", nargs="*", metavar="KEY=VALUE",
                      help="a param (VALUE is JSON if it parses, else a string)")
    send.add_argument("--params", default=None, help="all params as one JSON object")
    send.add_argument("--id", default=None, help="request id (the same id applies once; "
                      "default: a new one)")
    common(send)
    send.set_defaults(func=cmd_fleet_send)
    return fleet


# -- settings ------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    up = None
    if args.config:
        from runtime.config import load_config

        up = load_config(args.config).uplink
        if up is None:
            raise FleetError(f"{args.config}: has no [uplink] table", EXIT_USAGE)
    servers = args.server or (list(up.servers) if up else None)
    if not servers:
        raise FleetError("outpost fleet: give --server nats://HOST:4222 (or --config)",
                         EXIT_USAGE)

    def pick(flag: Any, name: str, default: Any = None) -> Any:
        if flag is not None:
            return flag
        return getattr(up, name) if up is not None else default

    from pathlib import Path

    def path(value: Any) -> Path | None:
        return None if value is None else Path(value)

    return {
        "servers": servers,
        "creds_file": path(pick(args.creds, "creds_file")),
        "nkey_file": path(pick(args.nkey, "nkey_file")),
        "user": pick(args.user, "user"), "password": pick(args.password, "password"),
        "token": pick(args.token, "token"),
        "ca_file": path(args.tls_ca if args.tls_ca else (up.tls.ca_file if up else None)),
        "cert_file": up.tls.cert_file if up else None,
        "key_file": up.tls.key_file if up else None,
        "prefix": pick(args.prefix, "prefix", "outpost"),
        "stream": pick(args.stream, "stream", "OUTPOST"),
    }


def _run(coro_fn: Any, *a: Any) -> Any:
    import asyncio

    return asyncio.run(coro_fn(*a))


async def _connect(s: dict[str, Any], timeout: float) -> Any:
    from runtime.uplink.connect import connect, connect_options

    opts = connect_options(
        servers=s["servers"], name="outpost-fleet", creds_file=s["creds_file"],
        nkey_file=s["nkey_file"], user=s["user"], password=s["password"], token=s["token"],
        ca_file=s["ca_file"], cert_file=s["cert_file"], key_file=s["key_file"],
        connect_timeout=min(timeout, 10.0))
    try:
        return await connect(opts)
    except Exception as exc:
        raise FleetError(f"outpost fleet: cannot connect to {', '.join(s['servers'])}: "
                         f"{type(exc).__name__}: {exc}") from None


# -- hosts ---------------------------------------------------------------------------


async def fleet_hosts(s: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    """Every host's latest snapshot, sorted by host id, each with `age_s` added."""
    from nats.js.errors import BucketNotFoundError, NoKeysError, NotFoundError

    from runtime.uplink.subjects import hosts_bucket

    nc = await _connect(s, timeout)
    try:
        js = nc.jetstream(timeout=timeout)
        try:
            kv = await js.key_value(hosts_bucket(s["stream"]))
            keys = await kv.keys()
        except (BucketNotFoundError, NotFoundError, NoKeysError):
            return []
        out = []
        now = time.time()
        for key in sorted(keys):
            try:
                entry = await kv.get(key)
                snap = json.loads(entry.value or b"{}")
            except (ValueError, NotFoundError):
                continue
            if isinstance(snap, dict):
                snap.setdefault("host", key)
                snap["age_s"] = max(0.0, now - float(snap.get("ts", now)))
                out.append(snap)
        return out
    finally:
        await nc.close()


def cmd_fleet_hosts(args: argparse.Namespace) -> int:
    try:
        hosts = _run(fleet_hosts, _settings(args), args.timeout)
    except FleetError as exc:
        return _fail(args, exc)
    if args.json:
        print(json.dumps({"hosts": hosts}, indent=2, sort_keys=True))
        return EXIT_OK
    from runtime.cli.format import duration, size, table

    rows = []
    for h in hosts:
        up = h.get("uplink", {})
        dropped = sum((up.get("dropped") or {}).values()) + sum((up.get("expired") or {})
                                                                 .values())
        rows.append([h.get("host"), duration(h.get("age_s")) + " ago", h.get("version"),
                     h.get("agents_running"), h.get("agents_failed"),
                     up.get("backlog_msgs"), size(up.get("backlog_bytes")), dropped])
    print(table(["HOST", "LAST SEEN", "VERSION", "RUNNING", "FAILED", "BACKLOG",
                 "BYTES", "DROPPED"], rows) if rows else "no hosts have reported yet")
    return EXIT_OK


# -- send ------------------------------------------------------------------------------


def parse_params(pairs: list[str], params_json: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if params_json:
        try:
            params = json.loads(params_json)
        except ValueError as exc:
            raise FleetError(f"--params is not JSON: {exc}", EXIT_USAGE) from None
        if not isinstance(params, dict):
            raise FleetError("--params must be a JSON object", EXIT_USAGE)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FleetError(f"param {pair!r}: expected KEY=VALUE", EXIT_USAGE)
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


async def fleet_send(s: dict[str, Any], host: str, method: str, params: dict[str, Any],
                     request_id: str | None, timeout: float) -> dict[str, Any]:
    """Send one command to `host` and return its answer ({"id", "host", "result"} or
    {"id", "host", "error"}); FleetError if none came within `timeout`."""
    import asyncio

    from nats.js.errors import NoStreamResponseError

    from runtime.uplink import commands, subjects

    if not subjects.is_token(host):
        raise FleetError(f"host {host!r}: expected a host id (letters, digits, '_', '-')",
                         EXIT_USAGE)
    request_id = request_id or uuid.uuid4().hex
    nc = await _connect(s, timeout)
    try:
        inbox = nc.new_inbox()
        answers: asyncio.Queue = asyncio.Queue()
        await nc.subscribe(inbox, cb=answers.put)
        js = nc.jetstream(timeout=timeout)
        # The id travels in the body, not as Nats-Msg-Id: JetStream would drop a repeat
        # unanswered, while the host's idempotency answers it with the first result.
        headers = {subjects.HEADER_REPLY: inbox}
        body = commands.encode_command(method, params, sender="fleet", request_id=request_id)
        try:
            await js.publish(subjects.cmd_subject(s["prefix"], host), body, headers=headers)
        except NoStreamResponseError:
            raise FleetError(f"no command stream on this server for prefix {s['prefix']!r}: no "
                             "host with commands enabled has connected yet") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise FleetError(f"no answer from {host} within {timeout:.0f} s (is it online? "
                                 f"the command stays queued and runs when it connects; send "
                                 f"it again with --id {request_id} to wait for the same one)")
            try:
                msg = await asyncio.wait_for(answers.get(), left)
            except TimeoutError:
                continue
            try:
                answer = commands.decode_answer(msg.data)
            except ValueError:
                continue
            if answer.get("id") == request_id:
                return answer
    finally:
        await nc.close()


def cmd_fleet_send(args: argparse.Namespace) -> int:
    try:
        params = parse_params(args.param, args.params)
        answer = _run(fleet_send, _settings(args), args.host, args.method, params, args.id,
                      args.timeout)
    except FleetError as exc:
        return _fail(args, exc)
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    elif "error" in answer:
        err = answer["error"]
        print(f"outpost: {answer.get('host')}: {err.get('code')}: {err.get('message')}",
              file=sys.stderr)
    else:
        print(json.dumps(answer.get("result"), indent=2, sort_keys=True))
    return EXIT_FAILED if "error" in answer else EXIT_OK


def _fail(args: argparse.Namespace, exc: FleetError) -> int:
    print(str(exc), file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": {"code": "usage" if exc.code == EXIT_USAGE else "failed",
                                    "message": str(exc)}, "exit": exc.code}))
    return exc.code


# -- `outpost uplink` (a client of the local control socket; registered with the CLI) ----


def uplink_text(stats: dict[str, Any]) -> str:
    """The human form of the `uplink` control method's answer."""
    from runtime.cli.format import duration, size

    link = stats.get("link", {})
    state = f"connected to {link.get('server')}" if link.get("connected") else "not connected"
    drops = {**{f"dropped {k}": v for k, v in (stats.get("dropped") or {}).items()},
             **{f"expired {k}": v for k, v in (stats.get("expired") or {}).items()}}
    lines = [
        f"uplink {stats.get('host')} -> {', '.join(stats.get('servers', []))}: {state}",
        f"  backlog   {stats.get('backlog_msgs')} message(s), {size(stats.get('backlog_bytes'))}"
        f" of {size(stats.get('max_bytes'))} ({stats.get('when_full')}); lag "
        f"{duration(stats.get('lag_s'))}",
        f"  sent      {link.get('published')} acknowledged, {stats.get('rate_per_s', 0):.0f}/s; "
        f"{link.get('in_flight')} in flight; {link.get('duplicates')} duplicate(s) dropped by "
        "JetStream",
        "  drops     " + (", ".join(f"{k}: {v}" for k, v in drops.items()) or "none")
        + f"; refused puts {stats.get('refused')}; rejected {stats.get('rejected')}",
        f"  commands  {link.get('commands')} handled, {link.get('commands_refused')} refused",
        f"  errors    {link.get('errors')}" + (f" (last: {link.get('last_error')})"
                                               if link.get("last_error") else ""),
    ]
    return "\n".join(lines)
