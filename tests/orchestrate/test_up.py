"""``headwater up`` serves the Dagster UI on 127.0.0.1 (HEADWATER_DAGSTER_PORT), with the
batch layer's assets loaded from the home's code location: two Dagster processes (the code
server with the daemon in it, the UI), not ``dagster dev``'s five, and no warning on the console.
The UI process starts on the first connection to its port (setting ``dagster.ui = "on_demand"``),
and the daemon evaluates the sensors."""

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil

from headwater.runtime import free_port

ASSETS = "{ assetNodes { assetKey { path } } }"


def ticked(home) -> bool:
    """Whether the daemon of ``home`` has evaluated the late-data sensor (a tick stored)."""
    from headwater.config import Home
    from headwater.orchestrate.instance import instance

    with instance(Home(home)) as dagster:
        states = [s for s in dagster.all_instigator_state() if s.instigator_name == "late_data"]
        return any(dagster.get_ticks(s.instigator_origin_id, s.selector_id, limit=1) for s in states)


def test_up_serves_the_dagster_ui_with_the_assets(tmp_path):
    port, dagster_port = free_port(), free_port()
    env = {**os.environ, "HEADWATER_HOME": str(tmp_path / "home"), "HEADWATER_PORT": str(port),
           "HEADWATER_DAGSTER_PORT": str(dagster_port)}
    out = (tmp_path / "up.out").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "headwater", "up"], env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{dagster_port}"

    def dagster() -> list[str]:
        return [" ".join(p.cmdline()) for p in psutil.Process(proc.pid).children(recursive=True) if "dagster" in " ".join(p.cmdline())]

    try:
        deadline = time.monotonic() + 240
        while len(dagster()) < 1:  # the code server with the daemon
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "up.out").read_text()
            time.sleep(0.5)
        time.sleep(3)
        assert len(dagster()) == 1, dagster()  # no UI process before anyone asks for the UI
        keys = []
        while not {"silver/events", "gold/active_users"} <= set(keys):
            assert proc.poll() is None, (tmp_path / "up.out").read_text()
            assert time.monotonic() < deadline, f"Dagster UI at {url} did not serve the assets: {keys}"
            try:
                r = httpx.post(f"{url}/graphql", json={"query": ASSETS}, timeout=5)
                keys = ["/".join(n["assetKey"]["path"]) for n in r.json()["data"]["assetNodes"]]
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                time.sleep(1)
        assert httpx.get(f"{url}/server_info", timeout=5).json()["dagster_webserver_version"]
        assert f"dagster    {url}" in (tmp_path / "up.out").read_text()
        assert len(dagster()) == 2 and not any(" dev " in c for c in dagster()), dagster()
        while not ticked(tmp_path / "home"):  # the daemon, in the code server's process, runs the sensors
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "up.out").read_text()
            time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
        out.close()
    assert os.path.exists(tmp_path / "home" / "dagster" / "dagster.yaml")
    console = (tmp_path / "up.out").read_text()
    assert "Warning" not in console and "Traceback" not in console, console
