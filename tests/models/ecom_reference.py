"""Independent reference: every gold table of the ecom dataset, in plain pandas from the CSV.

Nothing here uses the platform's SQL or code: the CSV is read with pandas, exact duplicate
rows dropped (silver's dedup), and each metric computed the straightforward way. A person is
the CSV ``user_id`` (the dataset has no identify events, so identity resolution keeps every
user id as its own person). Ties in event time are ordered by the row's event_id
(:func:`tests.models.ecom_bronze.event_id`, how the test bronze numbers rows).
"""

from __future__ import annotations

import datetime as dt
from functools import cache

import numpy as np
import pandas as pd

from tests.models.ecom_bronze import CSV_FIELDS, ecom_csv_path, event_id

GAP = pd.Timedelta(minutes=30)


@cache
def events() -> pd.DataFrame:
    """Distinct CSV rows with ``ts`` (UTC), ``day`` (date) and ``event_id``, sorted by (user, ts, event_id)."""
    df = pd.read_csv(ecom_csv_path(), dtype=str).drop_duplicates()
    df["event_id"] = [event_id(r) for r in df[list(CSV_FIELDS)].to_dict("records")]
    df["ts"] = pd.to_datetime(df["timestamp"]).dt.tz_localize("UTC")
    df["day"] = df["ts"].dt.date
    return df.sort_values(["user_id", "ts", "event_id"]).reset_index(drop=True)


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    return list(pd.date_range(start, end, freq="D").date)


def active_users(start: dt.date, end: dt.date, by_platform: bool = False) -> pd.DataFrame:
    """DAU/WAU/MAU (+ stickiness): distinct users active in [d], [d-6, d], [d-27, d]."""
    df = events()
    keys = ["platform"] if by_platform else []
    per_day = df.groupby(keys + ["day"])["user_id"].agg(set).to_dict()
    groups = sorted(df["platform"].unique()) if by_platform else [None]
    rows = []
    for d in days(start, end):
        for g in groups:
            def active(n: int) -> int:
                users: set[str] = set()
                for k in range(n):
                    day = d - dt.timedelta(days=k)
                    users |= per_day.get((g, day) if by_platform else day, set())
                return len(users)

            mau = active(28)
            if by_platform and mau == 0:
                continue
            row = {"ds": d, "dau": active(1), "wau": active(7), "mau": mau, "stickiness": active(1) / mau if mau else None}
            rows.append({"ds": d, "platform": g, **{k: v for k, v in row.items() if k != "ds"}} if by_platform else row)
    return pd.DataFrame(rows)


def events_hourly() -> pd.DataFrame:
    df = events().assign(hour=lambda x: x["ts"].dt.floor("h"))
    out = df.groupby(["hour", "event", "platform"]).agg(events=("event_id", "size"), persons=("user_id", "nunique")).reset_index()
    return out.rename(columns={"event": "event_name"})


def sessions() -> pd.DataFrame:
    """30-minute inactivity gap per user; entry/exit = first/last event, platform = first's."""
    df = events()
    new = (df["user_id"] != df["user_id"].shift()) | (df["ts"] - df["ts"].shift() > GAP)
    df = df.assign(session=new.cumsum())
    g = df.groupby("session")
    out = pd.DataFrame({
        "person_id": g["user_id"].first(),
        "session_start": g["ts"].first(),
        "session_end": g["ts"].last(),
        "events": g.size(),
        "entry_event": g["event"].first(),
        "exit_event": g["event"].last(),
        "platform": g["platform"].first(),
    }).reset_index(drop=True)
    out["duration_seconds"] = (out["session_end"] - out["session_start"]).dt.total_seconds()
    out["ds"] = out["session_start"].dt.date
    return out


def _month_end(first: dt.date, months: int) -> dt.date:
    """The last day of the calendar month ``months`` after ``first``'s."""
    return (pd.Timestamp(first).to_period("M") + months).to_timestamp(how="end").date()


def retention() -> pd.DataFrame:
    """Day cohorts (n = 0..30), ISO-week cohorts (k = 0..12) and calendar-month cohorts
    (m = 0..12), complete periods only; ``ds`` = the cohort's last day (the day itself, the
    week's Sunday, the month's last day)."""
    df = events()[["user_id", "day"]].drop_duplicates()
    horizon = df["day"].max()
    first = df.groupby("user_id")["day"].min().rename("first")
    df = df.join(first, on="user_id")
    df["n"] = [(d - f).days for d, f in zip(df["day"], df["first"])]
    df["week"] = [f - dt.timedelta(days=f.weekday()) for f in df["first"]]
    df["k"] = [(d - w).days // 7 for d, w in zip(df["day"], df["week"])]
    df["month"] = [f.replace(day=1) for f in df["first"]]
    df["m"] = [(d.year - f.year) * 12 + d.month - f.month for d, f in zip(df["day"], df["month"])]
    period_end = {
        "day": lambda c, p: c + dt.timedelta(days=p),
        "week": lambda c, p: c + dt.timedelta(days=7 * p + 6),
        "month": _month_end,
    }
    rows = []
    for grain, cohort, period, last in (("day", "first", "n", 30), ("week", "week", "k", 12), ("month", "month", "m", 12)):
        members = df.groupby(cohort)["user_id"].nunique()
        active = df.groupby([cohort, period])["user_id"].nunique()
        for c, size in members.items():
            for p in range(last + 1):
                if period_end[grain](c, p) > horizon:
                    break
                a = int(active.get((c, p), 0))
                rows.append({"ds": period_end[grain](c, 0), "cohort_start": c, "cohort_grain": grain, "period": p,
                             "cohort_size": int(size), "active_users": a, "retention": a / size})
    return pd.DataFrame(rows)


def funnel(steps: list[str], window: pd.Timedelta) -> pd.DataFrame:
    """Per (entry day, entry platform, step): users with an entry reaching the step in order,
    and the median over them of the seconds from the entry to the step, each user's from
    their earliest entry that reached it (medians of whole microseconds, then seconds)."""
    df = events()
    times = {(u, s): np.sort(g["ts"].values) for (u, s), g in df[df["event"].isin(steps)].groupby(["user_id", "event"])}
    entries = df[df["event"] == steps[0]][["user_id", "ts", "platform", "day"]].drop_duplicates()
    best: dict[tuple, int] = {}
    first_time: dict[tuple, tuple] = {}  # (day, platform, user, step) -> (entry, microseconds to the step)
    for user, ts, platform, day in entries.itertuples(index=False):
        t, deadline, reached = ts.to_datetime64(), (ts + window).to_datetime64(), 1
        for k, step in enumerate(steps[1:], start=2):
            arr = times.get((user, step), np.array([], dtype="datetime64[ns]"))
            i = np.searchsorted(arr, t, side="right")  # first strictly later event
            if i == len(arr) or arr[i] > deadline:
                break
            t, reached = arr[i], k
            took = (arr[i] - ts.to_datetime64()) // np.timedelta64(1, "us")
            first_time[(day, platform, user, k)] = min(first_time.get((day, platform, user, k), (ts, took)), (ts, took))
        key = (day, platform, user)
        best[key] = max(best.get(key, 0), reached)
    medians = pd.Series({k: took for k, (_, took) in first_time.items()}, dtype="int64")
    medians = medians.groupby(level=[0, 1, 3]).median() / 1e6 if len(medians) else medians
    rows = []
    reach = pd.Series(best).rename_axis(["ds", "platform", "user"]).rename("reached").reset_index()
    for (day, platform), g in reach.groupby(["ds", "platform"]):
        entered = len(g)
        for k, step in enumerate(steps, start=1):
            users = int((g["reached"] >= k).sum())
            rows.append({"ds": day, "platform": platform, "step": k, "step_name": step, "entered": entered,
                         "users": users, "conversion": users / entered,
                         "median_seconds_to_convert": medians.get((day, platform, k)) if k > 1 and users else None})
    return pd.DataFrame(rows)
