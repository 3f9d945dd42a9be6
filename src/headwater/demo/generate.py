"""Synthetic product events at volume: canonical ``bronze.events`` rows, vectorised (numpy + Arrow).

For benchmarks and engine-parity tests that need more than the demo CSV: millions of events
per day, generated in chunks of whole columns (no per-event Python), written straight to
``bronze.events`` partitions. What a day holds (fixed shares; ``users`` defaults to one
user per 10 events):

* users with a stable anonymous id (``anon-<u>``) and, for 60 % of them, a user id
  (``user-<u>``) sent on their events after their daily login; platform per user (web 50 %,
  ios 30 %, android 20 %);
* three sessions per user and day (each event lies within 25 min of its session's
  start, so the 30-minute inactivity gap splits them), activity skewed towards low user
  numbers (a few heavy users, a long tail);
* track events of the checkout funnel in time order within a session (``product_view`` →
  ``add_to_cart`` → ``shipping_details`` → ``payment_details`` → ``purchase``, thinning out
  step by step) plus ``search`` and ``catalog``; pages (web) and screens (mobile);
* ``identify`` (4 %) with traits ``email``, ``plan`` (changes over time: SCD2 versions),
  ``country``; 1 in 100 of them is sent from another user's anonymous id (a shared
  device: a merge of two identified users, refused by default); ``alias`` (0.5 %) linking
  ``legacy-<u>`` (``properties.previousId``) to the user;
* ``Experiment Viewed`` exposures (2.5 %) of experiment :data:`EXPERIMENT` with a variant
  fixed per user (``control`` / ``treatment``); treatment users purchase more often;
* SDK re-sends: 0.5 % of events a second time, same ``event_id``, received 60 s later.

Deterministic for a given ``(n, day, seed, users)``. Timestamps are ``timestamp[us, UTC]``
inside ``day`` (UTC); ``received_at`` = event time + an exponential delay (mean 0.5 s).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.config import Home
from headwater.errors import InvalidInputError
from headwater.events import EVENT_SCHEMA
from headwater.lake.store import Lake

EXPERIMENT = "new_checkout"
MODELS_TOML = f"""
# Generated data (headwater.demo.generate): its experiment and funnel.
[dim_user]
tracked_traits = ["email", "plan", "country"]

[[funnels]]
name = "checkout"
window_hours = 24
steps = ["product_view", "add_to_cart", "shipping_details", "payment_details", "purchase"]

[[experiments]]
id = "{EXPERIMENT}"
variants = ["control", "treatment"]
weights = [0.5, 0.5]
conversion_event = "purchase"
"""
"""A models configuration (``<home>/models.toml``) matching the generated events."""

PLATFORMS = ("web", "ios", "android")
TRACK = ("product_view", "add_to_cart", "shipping_details", "payment_details", "purchase", "search", "catalog")
TRACK_P = (0.32, 0.18, 0.1, 0.07, 0.05, 0.15, 0.13)
PLANS = ("free", "pro", "team")
COUNTRIES = ("US", "DE", "FR", "GB", "BR", "IN", "JP")
# kinds of event and their shares
TRACK_KIND, PAGE_KIND, IDENTIFY_KIND, ALIAS_KIND, EXPOSURE_KIND = range(5)
KINDS_P = (0.805, 0.125, 0.04, 0.005, 0.025)
FUNNEL_STEPS = 5  # TRACK[:5] are the checkout funnel's steps, in order
PURCHASE, CATALOG = TRACK.index("purchase"), TRACK.index("catalog")
US = 1_000_000


def _take(values: tuple[str, ...], index: np.ndarray) -> pa.Array:
    """``values[index]`` as an Arrow string array (dictionary-decoded, no Python loop)."""
    return pa.DictionaryArray.from_arrays(pa.array(index.astype(np.int32)), pa.array(values)).cast(pa.string())


def _concat(*parts) -> pa.Array:
    """Element-wise string concatenation of arrays and Python strings."""
    return pc.binary_join_element_wise(*parts, "")


def _ids(prefix: str, numbers: np.ndarray) -> pa.Array:
    return _concat(prefix, pc.cast(pa.array(numbers), pa.string()))


def chunks(
    n: int, day: dt.date, *, seed: int = 0, users: int | None = None, chunk_rows: int = 1_000_000
) -> Iterator[pa.Table]:
    """The events of ``day`` as ``EVENT_SCHEMA`` tables of about ``chunk_rows`` rows each
    (``n`` events in all, plus the re-sends). Raises ``ValueError`` if ``n < 1``."""
    if n < 1:
        raise InvalidInputError(f"n: expected at least 1 event, got {n}")
    users = users or max(n // 10, 1)
    rng = np.random.default_rng([seed, day.toordinal()])
    # per-user attributes, shared by all chunks of the day
    platform = rng.choice(len(PLATFORMS), users, p=(0.5, 0.3, 0.2))
    identified = rng.random(users) < 0.6
    login = rng.integers(0, 86_400, users)  # second of the day of the login
    starts = rng.integers(0, 86_400 - 1_800, (users, 3))  # session starts, seconds of the day
    variant = (np.arange(users) * 2_654_435_761 % 2**32) % 2  # stable per user across days
    day_us = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp() * US)
    first = 0
    while first < n:
        size = min(chunk_rows, n - first)
        yield _chunk(rng, first, size, day, day_us, seed, platform, identified, login, starts, variant)
        first += size


def _chunk(rng, first, size, day, day_us, seed, platform, identified, login, starts, variant) -> pa.Table:
    users = len(platform)
    u = np.minimum((rng.random(size) ** 2 * users).astype(np.int64), users - 1)  # skewed
    kind = rng.choice(len(KINDS_P), size, p=KINDS_P)
    ident = identified[u]
    links = (kind == IDENTIFY_KIND) | (kind == ALIAS_KIND)
    kind = np.where(links & ~ident, PAGE_KIND, kind)  # anonymous users send pages instead
    links &= ident
    name = rng.choice(len(TRACK), size, p=TRACK_P)
    treated = variant[u] == 1
    name = np.where((name == CATALOG) & treated & (rng.random(size) < 0.3), PURCHASE, name)  # the lift
    # event time: in one of the user's sessions; funnel steps later in the session than earlier ones
    step = np.where((kind == TRACK_KIND) & (name < FUNNEL_STEPS), name, rng.integers(0, FUNNEL_STEPS, size))
    second = starts[u, rng.integers(0, 3, size)] + step * 240 + rng.integers(0, 600, size)
    event_us = day_us + second * US + rng.integers(0, US, size)
    received_us = event_us + (rng.exponential(0.5, size) * US).astype(np.int64)
    logged_in = ident & ((second >= login[u]) | links)

    mobile = platform[u] > 0
    page_name = np.where(mobile, 3 + rng.integers(0, 2, size), rng.integers(0, 3, size))
    types = ("page", "screen", "identify", "alias", "track")
    event_type = np.select(
        [kind == IDENTIFY_KIND, kind == ALIAS_KIND, (kind == PAGE_KIND) & mobile, kind == PAGE_KIND], [2, 3, 1, 0], 4
    )
    names = TRACK + ("Experiment Viewed", "Home", "Pricing", "Docs", "Feed", "Settings")
    name_index = np.select(
        [kind == TRACK_KIND, kind == EXPOSURE_KIND, kind == PAGE_KIND], [name, len(TRACK), len(TRACK) + 1 + page_name], -1
    )

    user_num = pc.cast(pa.array(u), pa.string())
    anon_owner = np.where((kind == IDENTIFY_KIND) & (rng.random(size) < 0.01), (u + 1) % users, u)  # shared device
    user_id = _concat("user-", user_num)
    plan = _take(PLANS, rng.choice(len(PLANS), size, p=(0.6, 0.3, 0.1)))
    traits = _concat('{"email":"user-', user_num, '@example.com","plan":"', plan,
                     '","country":"', _take(COUNTRIES, u % len(COUNTRIES)), '"}')
    exposure = _concat('{"experiment_id":"', EXPERIMENT, '","variation_id":"',
                       _take(("control", "treatment"), variant[u]), '"}')
    properties = pc.case_when(
        pc.make_struct(*(pa.array(kind == k) for k in (IDENTIFY_KIND, ALIAS_KIND, EXPOSURE_KIND, TRACK_KIND))),
        traits, _concat('{"previousId":"legacy-', user_num, '"}'), exposure,
        _concat('{"product_id":"p', pc.cast(pa.array(rng.integers(0, 5_000, size)), pa.string()), '"}'),
        pa.scalar("{}"),
    )
    columns = {
        "event_id": _ids(f"{day.isoformat()}-{seed}-", np.arange(first, first + size)),
        "event_type": _take(types, event_type),
        "event_name": pc.if_else(pa.array(name_index < 0), pa.scalar(None, pa.string()),
                                 _take(names, np.maximum(name_index, 0))),
        "anonymous_id": _ids("anon-", anon_owner),
        "user_id": pc.if_else(pa.array(logged_in), user_id, pa.scalar(None, pa.string())),
        "event_ts": pa.array(event_us, pa.int64()).cast(EVENT_SCHEMA.field("event_ts").type),
        "received_at": pa.array(received_us, pa.int64()).cast(EVENT_SCHEMA.field("received_at").type),
        "source": _take(("bench",), np.zeros(size, np.int32)),
        "surface": _take(("web", "mobile"), mobile.astype(np.int32)),
        "platform": _take(PLATFORMS, platform[u]),
        "properties": properties,
        "context": _take(('{"library":{"name":"headwater.demo.generate"}}',), np.zeros(size, np.int32)),
        "schema_version": _take(("1",), np.zeros(size, np.int32)),
        "ds": pa.array(np.full(size, (day - dt.date(1970, 1, 1)).days, np.int32)).cast(pa.date32()),
    }
    table = pa.table(columns).cast(EVENT_SCHEMA)
    resent = np.flatnonzero(rng.random(size) < 0.005)  # SDK re-sends: same event, received later
    copies = table.take(resent)
    later = pc.add(copies.column("received_at"), pa.scalar(60 * US, pa.duration("us")))
    copies = copies.set_column(6, EVENT_SCHEMA.field("received_at"), later)
    return pa.concat_tables([table, copies])


def write_day(home: Home, n: int, day: dt.date, *, seed: int = 0, users: int | None = None,
              chunk_rows: int = 1_000_000) -> int:
    """Append :func:`chunks` to ``home``'s ``bronze.events`` (one commit per chunk, app_id
    ``"generate-<day>-<seed>"``, idempotent on re-run). Returns the rows written (events +
    re-sends)."""
    lake = Lake.of(home)
    app_id = f"generate-{day.isoformat()}-{seed}"
    done = lake.committed_batch("bronze.events", app_id)
    rows = 0
    for batch_id, chunk in enumerate(chunks(n, day, seed=seed, users=users, chunk_rows=chunk_rows)):
        if done is None or batch_id > done:
            lake.append_once("bronze.events", chunk, app_id=app_id, batch_id=batch_id)
        rows += chunk.num_rows
    return rows
