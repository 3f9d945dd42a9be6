"""A Spark standalone cluster on this machine for tests: a master and workers as separate JVM
processes (``bin/spark-class org.apache.spark.deploy.master.Master`` / ``…worker.Worker``
from the pyspark package), on free 127.0.0.1 ports, logs under a temporary directory.

    cluster = start_cluster(workers=2)          # waits until every worker has registered
    run = cluster.drive("tests.stream.test_spark_distributed:scenario", home="/tmp/x")
    cluster.stop()

Drivers run in child processes (:meth:`SparkCluster.drive`): Spark allows one SparkContext
per process, and the test process already holds the local one (the ``spark`` fixture). A
driver function ``f(spark, **kwargs)`` returns a JSON value; its process can also be killed
mid-run (``os._exit``) to test recovery. The workers run this virtual environment's Python
(``PYSPARK_PYTHON``), so executors import headwater as the driver does; no executor shares
the driver's memory, so no write path can rely on it.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from headwater.runtime import free_port

ROOT = Path(__file__).resolve().parent.parent  # the repository: `tests` imports from here
RESULT = "DRIVER-RESULT "  # prefix of the driver's result line on stdout


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


@dataclass
class DriverRun:
    """A finished driver process: exit code, its result (``None`` if it returned none or died)
    and its combined output; ``seconds`` of wall time."""

    returncode: int
    result: object
    output: str
    seconds: float


@dataclass
class SparkCluster:
    master_url: str
    webui_port: int
    workers: int
    log_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def status(self) -> dict:
        """The master's JSON status (``aliveworkers``, ``workers``, ``activeapps``, …)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.webui_port}/json/", timeout=5) as r:
            return json.load(r)

    def env(self) -> dict[str, str]:
        """Environment of a driver process against this cluster."""
        return {
            **os.environ,
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "HEADWATER_SPARK_MASTER": self.master_url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }

    def drive(self, target: str, timeout_s: float = 900, env: dict[str, str] | None = None, **kwargs) -> DriverRun:
        """Run ``module:function`` as the driver of an application on this cluster, in a
        child process: ``function(spark, **kwargs)`` (kwargs JSON-serializable). Returns the
        :class:`DriverRun` whatever the exit code (the caller asserts)."""
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "tests.spark_cluster", self.master_url, target, json.dumps(kwargs)],
            cwd=ROOT, env={**self.env(), **(env or {})}, capture_output=True, text=True, timeout=timeout_s,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
        result = json.loads(lines[-1].removeprefix(RESULT)) if lines else None
        return DriverRun(proc.returncode, result, proc.stdout + proc.stderr, time.perf_counter() - t0)

    def stop(self) -> None:
        """Stop the workers (and their executors), then the master; keep nothing running."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # its own process group: the JVM and its executors
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()
        shutil.rmtree(self.log_dir, ignore_errors=True)


def start_cluster(workers: int = 2, cores: int = 1, memory: str = "1536m", timeout_s: float = 180) -> SparkCluster:
    """Start a master and ``workers`` workers (``cores`` cores, ``memory`` for executors
    each) and wait until every worker has registered. ``RuntimeError`` with the logs if not."""
    home = spark_home()
    log_dir = Path(tempfile.mkdtemp(prefix="headwater-spark-cluster-"))
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(log_dir),
        "SPARK_DAEMON_MEMORY": "512m",  # the master's and workers' own JVM heap
        "PYSPARK_PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    port, webui = free_port(), free_port()
    cluster = SparkCluster(f"spark://127.0.0.1:{port}", webui, workers, log_dir)

    def launch(name: str, *args: str) -> None:
        with open(log_dir / f"{name}.log", "wb") as out:
            cluster.procs.append(subprocess.Popen([str(home / "bin" / "spark-class"), *args], env=env, stdout=out,
                                                  stderr=subprocess.STDOUT, start_new_session=True))

    def wait(what: str, up) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if any(p.poll() is not None for p in cluster.procs):
                raise RuntimeError("a cluster process exited")
            try:
                if up():
                    return
            except (OSError, ValueError):  # not listening yet; the master's UI answers /json/ with its HTML page while it starts
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {timeout_s} s")
            time.sleep(0.1)

    def master_listens() -> bool:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True

    try:
        launch("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui))
        # The workers start once the master listens: a worker that finds no master retries only
        # after 5-15 s (Spark's registration back-off; seen under load: 30 s to start, not 18 s).
        wait("the master did not listen", master_listens)
        for i in range(workers):
            work = log_dir / f"worker-{i}"
            work.mkdir()
            launch(f"worker-{i}", "org.apache.spark.deploy.worker.Worker", cluster.master_url, "--host", "127.0.0.1",
                   "--cores", str(cores), "--memory", memory, "--port", str(free_port()), "--webui-port", str(free_port()),
                   "--work-dir", str(work))
        wait(f"{workers} workers did not register", lambda: cluster.status().get("aliveworkers") == workers)
        return cluster
    except BaseException as e:
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(log_dir.glob("*.log")))
        cluster.stop()
        if isinstance(e, RuntimeError):
            raise RuntimeError(f"{e}\n{logs}") from e
        raise


def _main(master: str, target: str, kwargs: str) -> None:
    """The driver process of :meth:`SparkCluster.drive`."""
    from headwater.spark import session

    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    spark = session("headwater-cluster-test", master=master)
    try:
        result = fn(spark, **json.loads(kwargs))
        print(RESULT + json.dumps(result), flush=True)
    finally:
        spark.stop()


if __name__ == "__main__":
    _main(*sys.argv[1:4])
