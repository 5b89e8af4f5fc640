"""[http]: defaults, listen forms, and the token a listen other hosts can reach requires."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ConfigError, load_config
from runtime.config.schema import Listen, parse_listen


def load(tmp_path: Path, http: str, agents: str = ""):
    path = tmp_path / "outpost.toml"
    path.write_text(f"[http]\n{http}\n{agents}")
    return load_config(path)


def error_of(tmp_path: Path, http: str, agents: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, http, agents)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_defaults_are_on_loopback_read_only_and_without_a_token(tmp_path: Path) -> None:
    http = load(tmp_path, "").http
    assert (http.enabled, http.listen, http.auth_token_file, http.read_only) == \
        (True, "127.0.0.1:9477", None, True)
    assert http.address == Listen("127.0.0.1", 9477) and http.address.local


@pytest.mark.parametrize(("value", "expected", "local"), [
    ("127.0.0.1:9477", Listen("127.0.0.1", 9477), True),
    ("127.1.2.3:0", Listen("127.1.2.3", 0), True),
    ("localhost:80", Listen("localhost", 80), True),
    ("[::1]:9477", Listen("::1", 9477), True),
    ("0.0.0.0:9477", Listen("0.0.0.0", 9477), False),  # noqa: S104 - what is parsed
    ("[::]:9477", Listen("::", 9477), False),
    ("192.168.1.20:9477", Listen("192.168.1.20", 9477), False),
    ("unix:/run/outpost/http.sock", Listen(path="/run/outpost/http.sock"), True),
    ("var/run/http.sock", Listen(path="var/run/http.sock"), True),
])
def test_listen_forms(value: str, expected: Listen, local: bool) -> None:
    assert parse_listen(value) == expected
    assert expected.local is local


@pytest.mark.parametrize("value", ["9477", "127.0.0.1", "127.0.0.1:99999", "example.com:80",
                                   "[127.0.0.1]:80", "::1:9477", "unix:", "1.2.3:80"])
def test_a_bad_listen_says_what_is_expected(tmp_path: Path, value: str) -> None:
    message = error_of(tmp_path, f'listen = "{value}"')
    assert "http.listen" in message and "'IP:port'" in message


def test_listen_beyond_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'listen = "0.0.0.0:9477"')
    assert "http.auth_token_file: required" in message
    assert "reachable from other hosts" in message and "chmod 600" in message


def test_listen_beyond_loopback_with_a_token_or_disabled_loads(tmp_path: Path) -> None:
    http = load(tmp_path, 'listen = "0.0.0.0:9477"\nauth_token_file = "secret/token"').http
    assert http.auth_token_file == (tmp_path / "secret" / "token").resolve()
    assert not load(tmp_path, 'listen = "0.0.0.0:9477"\nenabled = false').http.enabled


def test_a_unix_socket_path_is_made_absolute(tmp_path: Path) -> None:
    http = load(tmp_path, 'listen = "run/http.sock"').http
    assert http.listen == f"unix:{(tmp_path / 'run' / 'http.sock').resolve()}"
    assert http.address.path == str((tmp_path / "run" / "http.sock").resolve())
    message = error_of(tmp_path, f'listen = "unix:/{"x" * 120}"')
    assert "too long for a Unix socket path" in message


def test_types_are_checked(tmp_path: Path) -> None:
    assert "http.read_only" in error_of(tmp_path, 'read_only = "no"')
    assert "http.enabled" in error_of(tmp_path, "enabled = 1")
    assert "http.colour" in error_of(tmp_path, 'colour = "blue"')


def test_the_agent_name_outpost_is_reserved_for_the_runtime(tmp_path: Path) -> None:
    message = error_of(tmp_path, "", '[[agents]]\nname = "outpost"\nentry = "m:run"\n')
    assert "agents[0].name" in message and "reserved" in message
