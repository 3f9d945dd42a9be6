"""Running the embedded platform: the collector and the stream processor as child processes.

``headwater up`` and ``headwater demo`` start both with :class:`Platform`; each is a plain
``python -m headwater <component>`` process sharing ``HEADWATER_HOME``, so either can be
killed (even with SIGKILL) and restarted on its own: the log and the checkpoint make that safe.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from headwater.config import Home
from headwater.errors import TransientError
from headwater.serve.progress import log_offsets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(home: Home, *args: str) -> subprocess.Popen:
    """Start ``python -m headwater <args>`` with ``HEADWATER_HOME`` set to ``home``."""
    env = {**os.environ, "HEADWATER_HOME": str(home.root)}
    return subprocess.Popen([sys.executable, "-m", "headwater", *args], env=env)


def wait_http(url: str, timeout_s: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; ``RuntimeError`` on timeout or if ``proc`` exits
    (with the process's output when it was piped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            out = out.decode(errors="replace") if isinstance(out, bytes) else out
            raise RuntimeError(f"process exited with code {proc.returncode} before {url} answered\n{out}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def lag(home: Home) -> int:
    """Events in the log not yet committed by the bronze query (both topics, all partitions)."""
    return sum(t["lag"] for t in log_offsets(home).values())


@dataclass
class Platform:
    """Collector (HTTP on 127.0.0.1:``port``) + stream processor, as supervised children; with
    ``dagster_port`` also the Dagster UI + daemon (:mod:`headwater.orchestrate.server`)."""

    home: Home
    port: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    dagster_port: int | None = None

    @property
    def dagster_url(self) -> str | None:
        return f"http://127.0.0.1:{self.dagster_port}" if self.dagster_port else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Platform":
        """Start both children and wait for the collector; :class:`TransientError` (children
        stopped) if a port is taken or the collector does not come up."""
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", self.port))
            except OSError as e:
                raise TransientError(f"collector cannot listen on {self.url}: {e.strerror}", field="collector.port") from None
        if self.dagster_port:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", self.dagster_port))
                except OSError as e:
                    raise TransientError(f"Dagster UI cannot listen on {self.dagster_url}: {e.strerror}", field="dagster.port") from None
        self.start_component("collector")
        self.start_component("stream")
        try:
            wait_http(self.url + "/health", proc=self.procs["collector"])
        except RuntimeError as e:
            self.stop()
            raise TransientError(f"collector did not start on {self.url}: {e}") from None
        if self.dagster_port:  # after the collector: its start is what clients wait for
            self.start_component("dagster")
        return self

    def start_component(self, name: str) -> None:
        if name == "dagster":
            from headwater.orchestrate import server

            self.procs[name] = server.spawn(self.home, self.dagster_port)
            return
        args = ["collector", "--port", str(self.port)] if name == "collector" else ["stream"]
        self.procs[name] = spawn(self.home, *args)

    def supervise(self) -> None:
        """Restart a child that exited unexpectedly; returns on KeyboardInterrupt."""
        try:
            while True:
                for name, proc in list(self.procs.items()):
                    if proc.poll() is not None:
                        print(f"{name} exited with code {proc.returncode}; restarting", file=sys.stderr)
                        self.start_component(name)
                time.sleep(1)
        except KeyboardInterrupt:
            pass

    def wait_caught_up(self, timeout_s: float = 300.0, on_lag=None) -> None:
        """Block until the stream has committed everything in the log; ``TimeoutError`` otherwise."""
        deadline = time.monotonic() + timeout_s
        while (remaining := lag(self.home)) > 0:
            if on_lag:
                on_lag(remaining)
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream still {remaining} events behind after {timeout_s:.0f} s")
            if self.procs["stream"].poll() is not None:
                raise RuntimeError(f"stream processor exited with code {self.procs['stream'].returncode}")
            time.sleep(0.2)
        if on_lag:
            on_lag(0)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
