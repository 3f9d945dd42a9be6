"""Read tokens, roles and what each may read (headwater.serve.access), over a real home and lake."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat

import pyarrow as pa
import pytest

from headwater import credentials
from headwater.collector.segment import normalize, parse_request
from headwater.config import Home
from headwater.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError, UnauthorizedError
from headwater.ingest.tokens import Tokenizer
from headwater.lake import catalog
from headwater.lake.schemas import EVENTS_HOURLY_SCHEMA
from headwater.lake.store import Lake
from headwater.serve.access import (
    Principal, Role, TokenStore, allowed_tables, check_sql, identity_token, may_read, run_sql,
)

VIEWER, ANALYST, ADMIN = (Principal(r.name.lower(), r) for r in Role)


@pytest.fixture
def home(tmp_path) -> Home:
    return Home(tmp_path / "home")


@pytest.fixture
def lake_home(home) -> Home:
    """bronze.events and silver.events holding one Segment track event sent with userId u1."""
    body = json.dumps({"batch": [{"type": "track", "event": "Signed Up", "userId": "u1", "anonymousId": "a1",
                                  "messageId": "m-1", "timestamp": "2024-03-01T12:00:00Z"}]}).encode()
    n = normalize(parse_request(body), source="web", received_at_us=1_709_294_400_000_000, tokenizer=Tokenizer(home.hmac_key()))
    assert n.errors == []
    lake = Lake.of(home)
    lake.append_once("bronze.events", n.events, app_id="t", batch_id=0)
    day = n.events["ds"][0].as_py()
    lake.overwrite_partitions("gold.events_hourly", _hourly(day), day, day)
    return home


def _hourly(day: dt.date) -> pa.Table:
    hour = dt.datetime.combine(day, dt.time(12), tzinfo=dt.timezone.utc)
    return pa.Table.from_pylist([{"hour": hour, "event_type": "track", "event_name": "Signed Up", "platform": "server",
                                  "events": 1, "persons": 1, "ds": day}], schema=EVENTS_HOURLY_SCHEMA)


# -- tokens -------------------------------------------------------------------------------
def test_a_token_is_shown_once_stored_as_a_digest_in_a_private_file_and_authenticates(home):
    store = TokenStore(home)
    entry, token = store.add(Role.ANALYST, "notebook")
    assert token.startswith(credentials.READ_TOKEN_PREFIX) and len(token) == 38
    text = store.path.read_text()
    assert token not in text and credentials.digest(token) in text
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert entry.fingerprint == credentials.fingerprint(credentials.digest(token))
    assert TokenStore(home).authenticate(token) == Principal("notebook", Role.ANALYST)


def test_unknown_missing_and_revoked_tokens_are_unauthorized_without_echoing_the_token(home):
    store = TokenStore(home)
    _, token = store.add(Role.VIEWER, "tv")
    assert store.authenticate(token).role is Role.VIEWER  # cached from here on
    for bad in ("", None, token + "x", credentials.generate(credentials.READ_TOKEN_PREFIX)):
        with pytest.raises(UnauthorizedError) as e:
            store.authenticate(bad)
        assert e.value.exit_code == 5 and (not bad or bad not in str(e.value))
    revoked = TokenStore(home).revoke("tv")  # another process: the first store sees the file change
    assert revoked.revoked is not None
    with pytest.raises(UnauthorizedError, match="'tv' was revoked"):
        store.authenticate(token)


def test_the_final_comparison_is_credentials_verify(home, monkeypatch):
    store = TokenStore(home)
    _, token = store.add(Role.ADMIN)
    calls = []
    monkeypatch.setattr(credentials, "verify", lambda s, d, _v=credentials.verify: calls.append(d) or _v(s, d))
    store.authenticate(token)
    assert calls == [credentials.digest(token)]


def test_names_are_unique_among_active_tokens_and_reusable_after_revocation(home):
    store = TokenStore(home)
    store.add(Role.VIEWER, "wall")
    with pytest.raises(ConflictError):
        store.add(Role.ADMIN, "wall")
    store.revoke("wall")
    with pytest.raises(NotFoundError):
        store.revoke("wall")
    _, token = store.add(Role.ADMIN, "wall")
    assert store.authenticate(token).role is Role.ADMIN
    assert [(t.name, t.revoked is None) for t in store.tokens()] == [("wall", False), ("wall", True)]
    assert store.add(Role.VIEWER)[0].name.startswith("viewer-")


def test_roles_parse_and_order():
    assert Role.parse("analyst") is Role.ANALYST and str(Role.ADMIN) == "admin"
    assert Role.VIEWER < Role.ANALYST < Role.ADMIN
    with pytest.raises(InvalidInputError, match="role: must be one of viewer, analyst, admin"):
        Role.parse("owner")


# -- what each role reads ---------------------------------------------------------------------
def test_allowed_tables_per_role():
    assert allowed_tables(Role.VIEWER) == ("gold.*", "realtime.*")
    assert allowed_tables(Role.ANALYST) == ("silver.*", "gold.*", "realtime.*")
    assert allowed_tables(Role.ADMIN) == ("bronze.*", "silver.*", "gold.*", "realtime.*", "quality.*")
    assert may_read(Role.ADMIN, "bronze.bad_rows") and not may_read(Role.ANALYST, "bronze.bad_rows")


def test_check_sql_refuses_viewers_and_tables_outside_the_role():
    with pytest.raises(ForbiddenError, match="role viewer: SQL needs role analyst"):
        check_sql(VIEWER, "SELECT * FROM gold.active_users")
    assert check_sql(ANALYST, "SELECT * FROM silver.events JOIN gold.sessions USING (person_id)") == {"silver.events", "gold.sessions"}
    with pytest.raises(ForbiddenError, match="role analyst may not read bronze.bad_rows, bronze.events") as e:
        check_sql(ANALYST, "WITH b AS (SELECT * FROM bronze.events) SELECT * FROM b, Bronze.Bad_Rows")
    assert e.value.exit_code == 6
    assert check_sql(ADMIN, "SELECT * FROM bronze.bad_rows") == {"bronze.bad_rows"}


def test_a_restricted_session_holds_only_the_roles_tables_and_no_file_access(lake_home):
    assert run_sql(lake_home, ANALYST, "SELECT count(*) AS n FROM gold.events_hourly").to_pylist() == [{"n": 1}]
    listed = run_sql(lake_home, ANALYST, "SELECT schema_name || '.' || view_name AS t FROM duckdb_views() WHERE NOT internal AND NOT temporary")
    # bronze.events exists but is not there; the silver states read as empty until built (catalog)
    states = sorted(t.name for t in catalog.TABLES if t.empty_until_written and t.name.startswith("silver."))
    assert sorted(listed["t"].to_pylist()) == ["gold.events_hourly", *states]
    lake_file = next((lake_home.root / "lake" / "bronze" / "events").rglob("*.parquet"))
    with pytest.raises(ForbiddenError, match="disabled by configuration"):
        run_sql(lake_home, ANALYST, f"SELECT * FROM read_parquet('{lake_file}')")
    with pytest.raises(InvalidInputError, match="locked"):
        run_sql(lake_home, ANALYST, "SET enable_external_access = true")
    assert run_sql(lake_home, ADMIN, "SELECT count(*) AS n FROM bronze.events").to_pylist() == [{"n": 1}]


# -- identifiers --------------------------------------------------------------------------------
def test_hw_token_of_a_raw_id_equals_the_stored_token_for_admins_only(lake_home):
    got = run_sql(lake_home, ADMIN, "SELECT user_id, hw_token('u1') AS t, hw_token(NULL) AS n, "
                                    "anonymous_id = hw_token('a1') AS anon FROM bronze.events").to_pylist()
    assert got == [{"user_id": identity_token(lake_home, "u1"), "t": identity_token(lake_home, "u1"), "n": None, "anon": True}]
    assert got[0]["user_id"] != "u1"
    with pytest.raises(NotFoundError, match="hw_token"):
        run_sql(lake_home, ANALYST, "SELECT hw_token('u1')")
