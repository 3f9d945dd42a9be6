"""A real S3-compatible server for tests: moto's standalone server (``moto_server``, from the
dev dependency ``moto[server]``) on a free 127.0.0.1 port, as its own process.

moto keeps buckets in its process memory: they survive a restart of any client (a broker, a
stream processor) and vanish when the server stops. Clients reach it with
:meth:`S3Server.storage_options` (delta-rs / object_store keys) or :meth:`S3Server.env`
(``AWS_*`` environment variables, e.g. for the Tansu broker's ``s3://`` storage engine).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from headwater.runtime import free_port
from tests.helpers import terminate

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass
class S3Server:
    port: int
    proc: subprocess.Popen

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def storage_options(self) -> dict[str, str]:
        """delta-rs ``storage_options`` for this server (conditional puts by ETag, which moto
        implements, so concurrent Delta writers need no lock service)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_ALLOW_HTTP": "true",
            "conditional_put": "etag",
        }

    def env(self) -> dict[str, str]:
        """``AWS_*`` environment variables pointing a client at this server."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ALLOW_HTTP": "true",
        }

    def lake_toml(self, bucket: str, prefix: str = "lake", secret: str = SECRET_KEY) -> str:
        """``headwater.toml``'s ``[lake]`` section putting a home's lake at ``s3://bucket/prefix``
        on this server (the ``lake.s3_*`` settings, docs/object-storage.md). This server checks
        no signatures, so any ``secret`` works (a distinctive one lets a test look for leaks)."""
        return (
            f'[lake]\nroot = "s3://{bucket}/{prefix}"\ns3_endpoint = "{self.endpoint}"\ns3_region = "{REGION}"\n'
            f's3_access_key_id = "{ACCESS_KEY}"\ns3_secret_access_key = "{secret}"\n'
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default) and return its name."""
        import boto3

        name = name or f"hw-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name=REGION,
        )
        client.create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        terminate(self.proc)


def start_s3(timeout_s: float = 60.0, env: dict[str, str] | None = None) -> S3Server:
    """Start ``moto_server`` on a free loopback port and wait until it answers. ``env``: extra
    variables of the server process (e.g. moto's ``INITIAL_NO_AUTH_ACTION_COUNT``, after which
    it checks request signatures against the access keys created in its IAM)."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        raise RuntimeError("moto_server not found: it comes with the dev dependency moto[server] (uv sync)")
    port = free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    server = S3Server(port, proc)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=2).close()
            return server
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto_server did not start on port {port}") from None
            time.sleep(0.1)
