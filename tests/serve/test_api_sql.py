"""POST /api/sql over a real server (tests/serve/conftest.py): roles, errors, the statement
timeout (serve.sql_timeout_s = 1) and the row limit (serve.sql_max_rows = 50)."""

from __future__ import annotations

import pytest

from headwater.serve.access import identity_token


def sql(api, role, statement, **extra):
    with api.client(role) as c:
        return c.post("/sql", json={"sql": statement, **extra})


def test_viewers_get_no_sql_and_a_token_is_required(api):
    assert sql(api, None, "SELECT 1").status_code == 401
    r = sql(api, "viewer", "SELECT 1")
    assert r.status_code == 403 and "role viewer" in r.json()["message"]


@pytest.mark.parametrize(("role", "status"), [("analyst", 403), ("admin", 200)])
def test_bronze_is_for_admins_only(api, role, status):
    r = sql(api, role, "SELECT count(*) AS n FROM bronze.bad_rows")
    assert r.status_code == status, r.text
    if status == 200:
        assert r.json()["rows"] == [{"n": 0}]
    else:
        assert "bronze.bad_rows" in r.json()["message"]


@pytest.mark.parametrize("role", ["analyst", "admin"])
def test_a_result_streams_as_one_json_document(api, role):
    r = sql(api, role, "SELECT platform, count(*) AS sessions, min(session_start) AS first FROM gold.sessions GROUP BY platform ORDER BY platform")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {"columns": [{"name": "platform", "type": "string"}, {"name": "sessions", "type": "int64"},
                                    {"name": "first", "type": "timestamp[us, tz=UTC]"}],
                        "rows": [{"platform": "ios", "sessions": 2, "first": "2024-03-01T10:00:00Z"},
                                 {"platform": "web", "sessions": 3, "first": "2024-03-01T10:00:00Z"}],
                        "row_count": 2, "truncated": False, "error": None}


def test_admins_have_hw_token(api):
    r = sql(api, "admin", "SELECT hw_token('u1') AS t")
    assert r.json()["rows"] == [{"t": identity_token(api.home, "u1")}]
    assert sql(api, "analyst", "SELECT hw_token('u1') AS t").status_code == 404  # no such function for analysts


@pytest.mark.parametrize(("statement", "status", "text"), [
    ("SELEC 1", 400, "syntax error"),
    ("SET threads = 1", 400, "configuration has been locked"),
    ("SELECT * FROM gold.active_users_by_plat", 404, "does not exist"),
    ("SELECT nope FROM gold.sessions", 400, "nope"),
    ("SELECT * FROM read_parquet('/etc/*.parquet')", 403, "disabled"),
])
def test_bad_statements_get_a_4xx_naming_the_problem(api, statement, status, text):
    r = sql(api, "admin", statement)
    assert r.status_code == status, r.text
    assert r.json()["field"] == "sql" and text in r.json()["message"]


def test_the_row_limit_truncates_and_the_setting_caps_it(api):
    small = sql(api, "analyst", "SELECT * FROM range(100)", limit=5).json()
    assert [r["range"] for r in small["rows"]] == [0, 1, 2, 3, 4] and small["truncated"] is True
    capped = sql(api, "analyst", "SELECT * FROM range(100)", limit=1000).json()
    assert capped["row_count"] == len(capped["rows"]) == 50 and capped["truncated"] is True  # serve.sql_max_rows
    exact = sql(api, "analyst", "SELECT * FROM range(50)").json()
    assert exact["row_count"] == 50 and exact["truncated"] is False
    assert sql(api, "analyst", "SELECT 1", limit=0).status_code == 400


def test_a_slow_statement_is_interrupted_at_the_timeout(api):
    r = sql(api, "analyst", "SELECT count(*) FROM range(100000000000) a, range(1000000) b")
    assert r.status_code == 504, r.text
    assert "serve.sql_timeout_s = 1 s" in r.json()["message"]
    assert sql(api, "analyst", "SELECT 42 AS x").json()["rows"] == [{"x": 42}]  # the server is still fine
