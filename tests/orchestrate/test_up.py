"""``headwater up`` serves the Dagster UI on 127.0.0.1 (HEADWATER_DAGSTER_PORT), with the
batch layer's assets loaded from the home's code location: three Dagster processes (one code
server, the daemon, the UI), not ``dagster dev``'s five, and no warning on the console. The UI
process starts on the first connection to its port (setting ``dagster.ui = "on_demand"``)."""

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil

from headwater.runtime import free_port

ASSETS = "{ assetNodes { assetKey { path } } }"


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
        while len(dagster()) < 2:  # the code server and the daemon
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "up.out").read_text()
            time.sleep(0.5)
        time.sleep(3)
        assert len(dagster()) == 2, dagster()  # no UI process before anyone asks for the UI
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
        assert len(dagster()) == 3 and not any(" dev " in c for c in dagster()), dagster()
        time.sleep(5)  # a sensor and the schedule have been evaluated by the daemon meanwhile
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
        out.close()
    assert os.path.exists(tmp_path / "home" / "dagster" / "dagster.yaml")
    console = (tmp_path / "up.out").read_text()
    assert "Warning" not in console and "Traceback" not in console, console
