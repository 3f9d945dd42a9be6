"""The query API over a lake on S3 (the ``s3`` fixture: moto's server): a real server whose
home's ``[lake]`` settings put the tables of tests/serve/conftest.py in a bucket answers
every metric endpoint and ``POST /api/sql`` (a restricted analyst session included: DuckDB's
file access is off, the Arrow scans read S3 through pyarrow) exactly as the local ``api``
does, and sees a new commit on the next request."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from headwater.config import Home
from headwater.lake import schemas as s
from headwater.lake.store import Lake
from headwater.serve.access import Role, TokenStore
from tests.helpers import start_collector
from tests.serve.conftest import SETTINGS, Api, write_lake

RANGE = {"start": "2024-03-01", "end": "2024-03-02"}
METRICS = ["/metrics/active_users", "/metrics/retention", "/metrics/funnels/checkout", "/metrics/experiments/exp1",
           "/metrics/sessions", "/metrics/top_events", "/metrics/revenue"]
SQL = "SELECT platform, count(*) AS sessions, sum(duration_seconds) AS seconds FROM gold.sessions GROUP BY platform ORDER BY platform"


@pytest.fixture(scope="module")
def s3_api(s3, tmp_path_factory) -> Api:
    home = Home(tmp_path_factory.mktemp("s3api") / "home")
    home.root.mkdir(parents=True)
    (home.root / "headwater.toml").write_text(SETTINGS + s3.lake_toml(s3.create_bucket()))
    write_lake(home)
    store = TokenStore(home)
    tokens = {str(role): store.add(role)[1] for role in Role}
    with start_collector(home.root) as c:
        yield Api(c.url, home, tokens)


def answers(api: Api) -> dict:
    out = {}
    with api.client("analyst") as c:
        for path in METRICS:
            r = c.get(path, params=RANGE)
            out[path] = (r.status_code, r.json())
        r = c.post("/sql", json={"sql": SQL})
        out["/sql"] = (r.status_code, r.json())
    return out


def test_the_api_answers_from_s3_as_from_local_disk(api, s3_api):
    assert Lake.of(s3_api.home).root.startswith("s3://") and not (s3_api.home.root / "lake").exists()
    got = answers(s3_api)
    assert all(status == 200 for status, _ in got.values()), got
    assert got == answers(api)


def test_a_commit_is_seen_by_the_next_request(s3_api):
    def dau() -> list[int]:
        with s3_api.client("analyst") as c:
            body = c.post("/sql", json={"sql": "SELECT dau FROM gold.active_users ORDER BY ds"}).json()
        return [r["dau"] for r in body["rows"]]

    before = dau()
    lake = Lake.of(s3_api.home)
    d3 = dt.date(2024, 3, 3)
    lake.overwrite_partitions("gold.active_users", pa.Table.from_pylist(
        [{"ds": d3, "dau": 42, "wau": 50, "mau": 60, "stickiness": 0.7}], schema=s.ACTIVE_USERS_SCHEMA), d3, d3)
    assert dau() == [*before, 42]
