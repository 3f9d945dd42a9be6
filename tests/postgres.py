"""A real PostgreSQL server for tests: ``initdb`` into a temp dir, ``postgres`` on a free
127.0.0.1 port with ``wal_level=logical`` (logical replication slots) and
``track_commit_timestamp=on`` (commit times of audit rows), stopped at the end.

Postgres refuses to run as root: when the tests run as root, the server runs as the
``postgres`` user (created by the Debian package), its data dir owned by that user.
Binaries: ``pg_ctl`` on PATH, else the newest ``/usr/lib/postgresql/<version>/bin``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from headwater.runtime import free_port

INSTALL_HINT = "install it with `apt-get install -y postgresql` (.ci/run does)"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (the reason says why)."""


def find_bin_dir() -> Path:
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0)
    for d in reversed(dirs):
        if (Path(d) / "postgres").exists() and (Path(d) / "initdb").exists():
            return Path(d)
    raise PostgresUnavailable(f"PostgreSQL server binaries (initdb, postgres) not found: {INSTALL_HINT}")


@dataclass
class PostgresServer:
    port: int
    data_dir: Path
    proc: subprocess.Popen

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its DSN."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # "immediate" shutdown: the data dir is deleted next
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def start_postgres(timeout_s: float = 60.0) -> PostgresServer:
    """Start a fresh server; :class:`PostgresUnavailable` when it cannot be (no binaries, no
    non-root user to run it as)."""
    import psycopg

    bin_dir = find_bin_dir()
    run_as: dict = {}
    base = Path(tempfile.mkdtemp(prefix="hw-pg-"))
    data = base / "data"
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no `postgres` user to run the server as") from None
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        os.chown(base, pw.pw_uid, pw.pw_gid)
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
        check=True, capture_output=True, cwd=base, **run_as,
    )
    port = free_port()
    settings = {
        "listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": str(base),
        "wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10",
        "track_commit_timestamp": "on", "fsync": "off",
        "full_page_writes": "off", "shared_buffers": "32MB", "max_connections": "40",
    }
    args = [str(bin_dir / "postgres"), "-D", str(data)] + [a for k, v in settings.items() for a in ("-c", f"{k}={v}")]
    log = open(base / "postgres.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=base, **run_as)
    server = PostgresServer(port, data, proc)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            psycopg.connect(server.dsn(), connect_timeout=2).close()
            return server
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise PostgresUnavailable(f"postgres did not start: {(base / 'postgres.log').read_text(errors='replace')[-2000:]}") from None
            time.sleep(0.1)
