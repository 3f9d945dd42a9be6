"""TLS for production: settings collector.tls_certfile / tls_keyfile reach uvicorn, and the
collector then answers HTTPS (checked against a self-signed certificate made here)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from headwater.collector.server import _tls
from headwater.config import Home
from headwater.errors import InvalidInputError
from headwater.runtime import free_port
from headwater.settings import CollectorSettings

from .conftest import basic

WRITE_KEY = "wk-tls-test-key-0001"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return certfile, keyfile


def test_collector_serves_https_with_the_configured_certificate(tmp_path):
    certfile, keyfile = self_signed(tmp_path)
    home = Home(tmp_path / "home")
    home.add_source("web", WRITE_KEY)
    port = free_port()
    env = {**os.environ, "HEADWATER_HOME": str(home.root),
           "HEADWATER_COLLECTOR_TLS_CERTFILE": str(certfile), "HEADWATER_COLLECTOR_TLS_KEYFILE": str(keyfile)}
    proc = subprocess.Popen([sys.executable, "-m", "headwater", "collector", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ssl.create_default_context(cafile=str(certfile)), timeout=5) as https:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, proc.stdout.read().decode()
                try:
                    if https.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "collector did not answer HTTPS"
                    time.sleep(0.2)
            r = https.post("/v1/batch", headers=basic(WRITE_KEY),
                           json={"batch": [{"type": "track", "event": "Over TLS", "userId": "u1", "messageId": "tls-1"}]})
            assert r.status_code == 200 and r.json()["accepted"] == 1
        # Plain HTTP on the same port is not served.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).raise_for_status()
        # A client that does not trust the certificate refuses the connection.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"https://127.0.0.1:{port}/health", timeout=2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_tls_settings_must_come_in_pairs_and_name_existing_files(tmp_path):
    assert _tls(CollectorSettings()) == {}
    certfile, keyfile = self_signed(tmp_path)
    assert _tls(CollectorSettings(tls_certfile=certfile, tls_keyfile=keyfile)) == {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
    with pytest.raises(InvalidInputError, match="collector.tls_keyfile: set both") as e:
        _tls(CollectorSettings(tls_certfile=certfile))
    assert e.value.field == "collector.tls_keyfile"
    with pytest.raises(InvalidInputError, match="collector.tls_certfile: no such file"):
        _tls(CollectorSettings(tls_certfile=tmp_path / "nope.pem", tls_keyfile=keyfile))
