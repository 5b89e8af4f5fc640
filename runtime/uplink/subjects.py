"""How the uplink names things on NATS: subjects, stream names, message ids, buckets.

Pure functions over strings, shared by the room and the fleet CLI (which imports no
runtime). Layout, for prefix P and host H:

    P.H.up.event.<type>            events, by type             stream <S> (P.*.up.>)
    P.H.up.state.<agent>           state changes of an agent
    P.H.up.metrics                 metric snapshots
    P.H.up.pub.<agent>.<suffix>    what agents publish (ctx.publish)
    P.H.cmd                        commands down               stream <S>_CMD (P.*.cmd)
    P.H.results                    answers to commands that named no reply subject
    KV <S>_HOSTS, key H            the host's latest snapshot  (outpost fleet hosts)
    Object Store <S>_BACKUP_H      the host's backups          (maintain backup nats)

Every up message has `Nats-Msg-Id: H/<epoch>/<store stream>/<seq>`: the store stream
and seq it came from, so a resend (after a reconnect or a crash) is the same id and
JetStream drops it inside the stream's duplicate window (and the uplink checks what
the stream holds before resending, so past the window too). The epoch is a random
token the outbox draws when it is created, and again after its store was restored
from a backup: seqs then repeat, and a repeated id must not make JetStream drop new
messages. Per host, epoch and stream the seq only grows, so a consumer can also drop
repeats itself.
"""

from __future__ import annotations

import re

from runtime.uplink.errors import MessageError

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BAD = re.compile(r"[^A-Za-z0-9_-]")
_SUFFIX_TOKEN = re.compile(r"^[^\s.*>]{1,128}$")
MAX_SUFFIX = 200

HEADER_ID = "Nats-Msg-Id"
HEADER_HOST = "Outpost-Host"
HEADER_KIND = "Outpost-Kind"
HEADER_AGENT = "Outpost-Agent"
HEADER_TIME = "Outpost-Time"
HEADER_REPLY = "Outpost-Reply-To"  # commands: where the answer goes


def token(text: str) -> str:
    """`text` made into one subject token: anything but letters, digits, '_', '-' -> '_'."""
    out = _BAD.sub("_", text)[:64]
    return out or "_"


def is_token(text: str) -> bool:
    return bool(_TOKEN.match(text))


def check_suffix(suffix: str) -> str:
    """An agent's subject suffix: dot-separated tokens, no wildcards or spaces."""
    if not isinstance(suffix, str) or not suffix or len(suffix) > MAX_SUFFIX or \
            not all(_SUFFIX_TOKEN.match(t) for t in suffix.split(".")):
        raise MessageError(f"subject suffix {suffix!r}: expected 1..{MAX_SUFFIX} characters of "
                           "dot-separated tokens without spaces, '*' or '>' (e.g. "
                           "'temperature.room1')")
    return suffix


def up_subject(prefix: str, host: str, tail: str) -> str:
    return f"{prefix}.{host}.up.{tail}"


def up_filter(prefix: str) -> str:
    """The up stream's subjects: every host's up messages."""
    return f"{prefix}.*.up.>"


def cmd_subject(prefix: str, host: str) -> str:
    return f"{prefix}.{host}.cmd"


def results_subject(prefix: str, host: str) -> str:
    return f"{prefix}.{host}.results"


def cmd_filter(prefix: str) -> str:
    return f"{prefix}.*.cmd"


def cmd_stream(stream: str) -> str:
    return f"{stream}_CMD"


def cmd_consumer(host: str) -> str:
    return f"cmd_{host}"


def hosts_bucket(stream: str) -> str:
    return f"{stream}_HOSTS"


def backup_bucket(stream: str, host: str) -> str:
    return f"{stream}_BACKUP_{host}"


RESYNC = "#resync"  # a state's whole-state message: its id stream is the state's + this


def msg_id(host: str, epoch: str, stream: str, seq: int) -> str:
    return f"{host}/{epoch}/{stream}/{seq}"


def split_id(msg_id: str | None) -> tuple[str, int] | None:
    """("host/epoch/stream", seq) of one of our ids (a whole-state message counts in its
    state stream's seqs: it follows the ops before it and precedes those after)."""
    if not msg_id:
        return None
    head, _, seq = msg_id.rpartition("/")
    try:
        return head.replace(RESYNC, ""), int(seq)
    except ValueError:
        return None
