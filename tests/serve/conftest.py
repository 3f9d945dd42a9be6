"""A real server (``headwater collector`` in a subprocess on 127.0.0.1) with the query API at
/api, over a home whose gold and realtime tables hold hand-made cells around the privacy floor
(k = 3): every breakdown has a cell of k persons (shown) and one of k - 1 (suppressed)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

import datasketches
import httpx
import pyarrow as pa
import pytest

from headwater.config import Home
from headwater.lake import schemas as s
from headwater.lake import sql as lake_sql
from headwater.lake.store import Lake
from headwater.models.dag import MODELS
from headwater.serve.access import Role, TokenStore
from tests.helpers import start_collector

K = 3
D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)
SETTINGS = f"""
[serve]
k_anonymity = {K}
sql_timeout_s = 1
sql_max_rows = 50
"""


@dataclass
class Api:
    url: str
    home: Home
    tokens: dict[str, str]  # role name -> read token

    def client(self, role: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url + "/api", headers=headers, timeout=30)


def _write(lake: Lake, table: str, schema: pa.Schema, rows: list[dict]) -> None:
    data = pa.Table.from_pylist(rows, schema=schema)
    days = sorted(r["ds"] for r in rows)
    lake.overwrite_partitions(table, data, days[0], days[-1])


def _sketch(users: list[str]) -> bytes:
    sk = datasketches.hll_sketch(12)
    for u in users:
        sk.update(u)
    return sk.serialize_compact()


def write_lake(home: Home) -> None:
    lake = Lake.of(home)
    au = {"wau": 5, "mau": 6, "stickiness": 0.5}
    _write(lake, "gold.active_users_by_platform", s.ACTIVE_USERS_BY_PLATFORM_SCHEMA,
           [{"ds": D1, "platform": "web", "dau": K, **au}, {"ds": D1, "platform": "ios", "dau": K - 1, **au},
            {"ds": D2, "platform": "web", "dau": K + 1, **au}])
    _write(lake, "gold.active_users", s.ACTIVE_USERS_SCHEMA, [{"ds": D1, "dau": K + 2, **au}, {"ds": D2, "dau": K + 1, **au}])
    _write(lake, "gold.retention", s.RETENTION_SCHEMA, [
        {"ds": D1, "cohort_start": D1, "cohort_grain": "day", "period": p, "cohort_size": 5, "active_users": n, "retention": n / 5}
        for p, n in ((0, 5), (1, K), (2, K - 1))])
    _write(lake, "gold.funnels", s.FUNNELS_SCHEMA, [
        {"ds": D1, "funnel": "checkout", "platform": "web", "step": step, "step_name": name, "entered": 5, "users": n, "conversion": n / 5}
        for step, name, n in ((1, "Product Viewed", 5), (2, "Order Completed", K - 1))])
    base = {f.name: None for f in s.EXPERIMENTS_SCHEMA}
    _write(lake, "gold.experiments", s.EXPERIMENTS_SCHEMA, [
        {**base, "ds": D1, "experiment_id": "exp1", "variant": "a", "is_control": True, "exposed": 10, "converters": K, "expected_share": 0.5},
        {**base, "ds": D1, "experiment_id": "exp1", "variant": "b", "is_control": False, "exposed": 10, "converters": K - 1, "expected_share": 0.5}])
    t0 = dt.datetime(2024, 3, 1, 10, tzinfo=dt.timezone.utc)
    sessions = [("web", f"p{i}", 60.0 * i, 1 + i) for i in range(K)] + [("ios", f"q{i}", 10.0, 1) for i in range(K - 1)]
    _write(lake, "gold.sessions", s.SESSIONS_SCHEMA, [
        {"session_id": f"{p}:1", "person_id": p, "session_start": t0, "session_end": t0 + dt.timedelta(seconds=d), "duration_seconds": d,
         "events": n, "entry_event": "Viewed", "exit_event": "Viewed", "platform": plat, "ds": D1} for plat, p, d, n in sessions])
    daily = next(m for m in MODELS if m.table == "gold.sessions_daily")  # built from those sessions by its own SQL
    rows = lake_sql.query(lake, daily.sql(), {"start": D1, "end": D1}).select(daily.schema.names).cast(daily.schema)
    lake.overwrite_partitions(daily.table, rows, D1, D1)
    _write(lake, "gold.events_hourly", s.EVENTS_HOURLY_SCHEMA, [
        {"hour": t0, "event_type": "track", "event_name": name, "platform": plat, "events": ev, "persons": n, "ds": D1}
        for name, plat, ev, n in (("Viewed", "web", 40, K), ("Viewed", "ios", 7, 1), ("Clicked", "web", 20, K), ("Rare", "web", 90, K - 1))])
    _write(lake, "gold.revenue", s.REVENUE_SCHEMA, [
        {"ds": ds, "platform": plat, "revenue": Decimal(rev), "conversions": 9, "paying_persons": n, "active_users": 10,
         "revenue_per_active_user": float(Decimal(rev) / 10)}
        for ds, plat, rev, n in ((D1, "web", "0.3", K), (D1, "ios", "5", K - 1), (D2, "web", "1234567890123.45", K + 1))])
    _write(lake, "gold.active_users_monthly", s.ACTIVE_USERS_MONTHLY_SCHEMA, [
        {"ds": ds, "month": ds.replace(day=1), "platform": plat, "active_users": n}
        for ds, plat, n in ((D1 - dt.timedelta(days=1), "web", K + 2), (D1, "web", K), (D1, "ios", K - 1), (D2, "web", K + 1))])
    now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    minute = dt.timedelta(minutes=1)
    lake.append("realtime.events_per_minute", pa.table({
        "window_start": pa.array([now - 2 * minute, now - 90 * minute], pa.timestamp("us", "UTC")),
        "window_end": pa.array([now - minute, now - 89 * minute], pa.timestamp("us", "UTC")),
        "event_name": ["Viewed", "Viewed"], "platform": ["web", "web"], "events": pa.array([4, 9], pa.int64())}))
    lake.append("realtime.users_per_minute", pa.table({
        "window_start": pa.array([now - 2 * minute, now - 30 * minute], pa.timestamp("us", "UTC")),
        "window_end": pa.array([now - minute, now - 29 * minute], pa.timestamp("us", "UTC")),
        "events": pa.array([4, 6], pa.int64()), "users": [2.0, 3.0],
        "users_sketch": [_sketch(["u1", "u2"]), _sketch(["u2", "u3", "u4"])]}))


@pytest.fixture(scope="package")
def api(tmp_path_factory) -> Api:
    home = Home(tmp_path_factory.mktemp("api") / "home")
    home.root.mkdir(parents=True)
    (home.root / "headwater.toml").write_text(SETTINGS)
    write_lake(home)
    store = TokenStore(home)
    tokens = {str(role): store.add(role)[1] for role in Role}
    tokens["revoked"] = store.add(Role.ADMIN, name="gone")[1]
    store.revoke("gone")
    with start_collector(home.root) as c:
        yield Api(c.url, home, tokens)
