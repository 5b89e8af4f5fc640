"""[uplink] in the config file: typed, nested tables, strict, clear errors."""

from __future__ import annotations

import socket

import pytest

from runtime.config import ConfigError, load_config
from runtime.config.schema import COMMANDS_ALLOWED


def load(tmp_path, text: str):
    path = tmp_path / "outpost.toml"
    path.write_text(text)
    return load_config(path)


def test_absent_means_no_uplink(tmp_path):
    assert load(tmp_path, "").uplink is None


def test_defaults_and_nested_tables(tmp_path):
    cfg = load(tmp_path, '''
[uplink]
servers = ["nats://hub:4222", "tls://hub2:4222"]
creds_file = "secrets/host.creds"
[uplink.outbox]
max_bytes = "8MiB"
when_full = "refuse_new"
[uplink.send]
events = ["agent-failed"]
state_of = ["a"]
metrics_every_s = 60
[uplink.tls]
ca_file = "ca.pem"
[[agents]]
name = "a"
entry = "x:y"
''').uplink
    assert cfg.servers == ("nats://hub:4222", "tls://hub2:4222")
    assert cfg.host_id == socket.gethostname().split(".")[0]
    assert cfg.prefix == "outpost" and cfg.stream == "OUTPOST"
    assert cfg.creds_file == (tmp_path / "secrets/host.creds").resolve()
    assert cfg.tls.ca_file == (tmp_path / "ca.pem").resolve()
    assert cfg.outbox.max_bytes == 8 << 20 and cfg.outbox.when_full == "refuse_new"
    assert cfg.send.events == ("agent-failed",) and cfg.send.state_of == ("a",)
    assert cfg.commands.allow == COMMANDS_ALLOWED and cfg.commands.max_deliver == 5
    assert cfg.backup.keep == 7 and cfg.duplicate_window_s == 7200


@pytest.mark.parametrize(("text", "message"), [
    ("[uplink]\n", "uplink.servers: missing"),
    ('[uplink]\nservers = ["http://x"]\n', "uplink.servers: expected a non-empty list"),
    ('[uplink]\nservers = ["nats://x"]\nhost_id = "a.b"\n', "uplink.host_id: expected letters"),
    ('[uplink]\nservers = ["nats://x"]\nprefix = "a.*"\n', "uplink.prefix: expected NATS"),
    ('[uplink]\nservers = ["nats://x"]\n[uplink.outbox]\nwhen_full = "block"\n',
     "uplink.outbox.when_full: expected one of 'drop_oldest', 'refuse_new'"),
    ('[uplink]\nservers = ["nats://x"]\n[uplink.outbox]\nmax_message_bytes = "2MiB"\n',
     "uplink.outbox.max_message_bytes: expected a size from 1 byte to 900KiB"),
    ('[uplink]\nservers = ["nats://x"]\n[uplink.outbox]\nmax_byte = 1\n',
     "uplink.outbox.max_byte: unknown key"),
    ('[uplink]\nservers = ["nats://x"]\noutbox = 5\n', "uplink.outbox: expected a table"),
    ('[uplink]\nservers = ["nats://x"]\ntoken = "t"\nuser = "u"\npassword = "p"\n',
     "give one way to log in, not user and token"),
    ('[uplink]\nservers = ["nats://x"]\nuser = "u"\n', "user and password go together"),
    ('[uplink]\nservers = ["nats://x"]\n[uplink.tls]\ncert_file = "c.pem"\n',
     "cert_file and key_file go together"),
    ('[uplink]\nservers = ["nats://x"]\n[uplink.send]\nstate_of = ["ghost"]\n',
     "no agent named 'ghost'"),
])
def test_bad_uplink_tables_say_what_to_fix(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("(", r"\(")):
        load(tmp_path, text)


def test_a_hostname_that_is_no_subject_token_asks_for_host_id(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "gw 1.factory")
    with pytest.raises(ConfigError, match="set host_id"):
        load(tmp_path, '[uplink]\nservers = ["nats://x"]\n')
    monkeypatch.setattr(socket, "gethostname", lambda: "gw-1.factory.example")
    assert load(tmp_path, '[uplink]\nservers = ["nats://x"]\n').uplink.host_id == "gw-1"
