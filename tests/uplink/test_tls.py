"""TLS to the server: verified against [uplink.tls] ca_file; an unknown CA is refused."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest

from runtime.config.schema import UplinkTlsSection
from tests.uplink.helpers import uplink_cfg
from tests.uplink.natsserver import NatsServer
from tests.uplink.test_publish import one_in_one_refused


def make_certs(d) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=outpost-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "ext.cnf")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make certs")
async def test_tls_verified_against_the_configured_ca(nats_binary, tmp_path):
    make_certs(tmp_path)
    server = NatsServer(nats_binary, tmp_path / "js", extra=[
        "--tls", "--tlscert", str(tmp_path / "server.pem"),
        "--tlskey", str(tmp_path / "server.key")]).start()
    try:
        url = f"tls://127.0.0.1:{server.port}"
        trusted = dataclasses.replace(uplink_cfg(url, "gw1"),
                                      tls=UplinkTlsSection(ca_file=tmp_path / "ca.pem"))
        untrusted = uplink_cfg(url, "gw2")  # the system's CAs do not know ours
        error = await one_in_one_refused(tmp_path, trusted, untrusted)
        assert "CERTIFICATE_VERIFY_FAILED" in error
    finally:
        server.kill9()
