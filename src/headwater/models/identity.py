"""Identity resolution: ``identify`` and ``alias`` events → one ``person_id`` per identifier.

``silver.identity_map`` maps every identifier (anonymous id or user id) that appears in a
link or as the ``user_id`` of an ``identify``; ``silver.identity_refused`` lists the refused
links (their grains and schemas: :mod:`headwater.lake.catalog`). Both are global over all
history (not per day), unpartitioned, and resolved whole on every run from
``silver.identity_links``, the graph's edges (:func:`links`), which a run updates from the
``bronze.events`` days that received rows since its last run (and rebuilds from all of
bronze on a full rebuild): a daily build reads one day of events and the graph, whose size
follows the identifiers, not the days. Resolution is deterministic over the edges, so a late
``identify`` re-stitches everything it touches, in any order of arrival.

The graph (the union-find of the design, computed as connected components):

* nodes are identifier values (tokens: a raw id is tokenised the same way as anonymousId,
  userId or previousId, so Segment's ``previousId`` meets the id it names);
* links: ``identify`` joins ``anonymous_id`` and ``user_id``; ``alias`` joins
  ``properties.previousId`` and ``user_id`` (Segment spec: "alias merges two user
  identities"). A pair linked several times keeps its earliest link (event time, then
  event_id). Links from other event types are not taken (an id pair on a ``track`` only says
  which SDK state it was sent from);
* an *identified* id is the ``user_id`` of an ``identify`` event: a known user.

Resolution, default (``merge_identified_users = false``): a person holds at most one
identified id — merging two different identified users (a shared device identified as two
users, an alias between two identified accounts) is refused, as PostHog refuses to merge
two identified persons. Every identified id starts its own person; a multi-source
breadth-first search spreads it over the links, each step taking for a newly reached node
the link with the earliest (event time, event_id, person) — so an anonymous id identified
as ``u1`` and later as ``u2`` stays with ``u1`` (first link wins), and chains
(``a1 -alias- a2 -identify- u1``) resolve transitively. Links whose two ends end up in
different persons are the refused merges. Components without any identified id (anonymous
ids aliased to each other) become one person each, by min-label propagation, named by the
smallest ``user_id`` of an alias among them, else their smallest id (:data:`_ALIAS_TARGET_KEY`).
With ``merge_identified_users = true`` every connected component is one person, named by its
smallest identified id (else as an anonymous component).

Each round is one set-based DuckDB statement over all nodes (no per-event Python loop); the
number of rounds is the longest shortest path from a person's root, small for identity
graphs. Each id also gets ``stitched_at``: the earliest event time by which links between
ids of its person, none of them later, join it to the person's root (a minimax path over
the links, :func:`_stitched_at`; null for a root), i.e. when it became that person's.

``silver.events`` then takes ``person_id`` = the mapped person of ``user_id`` when the event
has one, else of ``anonymous_id`` (an unmapped id is its own person) — unless the event lies
more than ``identity.stitch_lookback_days`` days before the day of its id's ``stitched_at``,
when the id stays its person (the rule ``{{person_id}}`` of :mod:`headwater.models.config`).
So anonymous events from before a login belong to the person (retroactive stitching) back to
the lookback, on every day that is (re)built after the link arrived, and a late link restates
at most that many days before its own (a bound on a daily build's cost that a full rebuild
applies alike: the rule reads only the data) — :func:`headwater.models.run.identity_stale_days`
lists the built days whose stored ``person_id`` no longer matches the map
(:func:`headwater.models.restate.remapped_days` finds them from the ids whose person changed).
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa

from headwater.lake.schemas import IDENTITY_LINKS_SCHEMA, IDENTITY_MAP_SCHEMA, IDENTITY_REFUSED_SCHEMA


# The edges of the graph as they stand (silver.identity_links, a = b marks an identified id).
_GRAPH = """
CREATE OR REPLACE TEMP TABLE _hw_links AS
    SELECT a, b, event_type, event_ts, event_id FROM silver.identity_links WHERE a <> b;
CREATE OR REPLACE TEMP TABLE _hw_adj AS
    SELECT a AS src, b AS dst, event_type, event_ts, event_id FROM _hw_links
    UNION ALL
    SELECT b, a, event_type, event_ts, event_id FROM _hw_links;
CREATE OR REPLACE TEMP TABLE _hw_identified AS
    SELECT DISTINCT b AS id FROM silver.identity_links WHERE a = b;
CREATE OR REPLACE TEMP TABLE _hw_nodes AS
    SELECT src AS id FROM _hw_adj UNION SELECT id FROM _hw_identified;
"""

# The links of some bronze days ({days}: a condition on ds) merged into the stored ones
# ({prior}): one row per unordered pair, the earliest (event time, event_id, then the rest,
# so the choice never depends on the order rows arrived in). Taking the earliest is
# idempotent and order-free, so merging day by day equals taking it over all of bronze.
_LINKS = """
WITH new AS (
    SELECT
        CASE WHEN event_type = 'identify' THEN anonymous_id
             ELSE json_extract_string(properties, '$.previousId') END AS a,
        user_id AS b, event_type, event_ts, event_id
    FROM bronze.events
    WHERE event_type IN ('identify', 'alias') AND {days}
    UNION ALL
    SELECT user_id, user_id, event_type, event_ts, event_id
    FROM bronze.events
    WHERE event_type = 'identify' AND user_id IS NOT NULL AND {days}
),
merged AS (
    SELECT a, b, event_type, event_ts, event_id FROM new WHERE a IS NOT NULL AND b IS NOT NULL
    UNION ALL
    SELECT a, b, event_type, event_ts, event_id FROM {prior}
)
SELECT a, b, event_type, event_ts, event_id
FROM merged
QUALIFY row_number() OVER (PARTITION BY least(a, b), greatest(a, b) ORDER BY event_ts, event_id, event_type, a, b) = 1
ORDER BY a, b
"""


def links(con: duckdb.DuckDBPyConnection, days: list[dt.date] | None, prior: bool) -> pa.Table:
    """``silver.identity_links`` after the ``bronze.events`` rows of ``days`` (``None``: every
    day) of catalog connection ``con`` (which holds ``silver.identity_links`` too, empty until
    written): with ``prior``, merged into the stored links, else from those days alone. A table with
    :data:`IDENTITY_LINKS_SCHEMA`: one row per unordered pair of ids linked by an identify
    (``anonymous_id``, ``user_id``) or alias (``properties.previousId``, ``user_id``) event —
    the earliest link, by event time then event_id — and one row ``a = b = user_id`` per
    identified user id (the earliest identify naming it). Raises ``duckdb.CatalogException``
    if ``bronze.events`` does not exist."""
    where = "TRUE" if days is None else (
        "ds IN (" + ", ".join(f"DATE '{d.isoformat()}'" for d in days) + ")" if days else "FALSE")
    source = "silver.identity_links" if prior else "(SELECT * FROM silver.identity_links WHERE FALSE)"
    return con.sql(_LINKS.format(days=where, prior=source)).to_arrow_table().cast(IDENTITY_LINKS_SCHEMA)


# Min-label propagation: every node's label becomes the smallest label among itself and its
# neighbours until nothing changes (connected components; labels are sort keys).
_PROPAGATE = """
CREATE OR REPLACE TEMP TABLE _hw_next AS
SELECT l.id, least(l.label, coalesce(min(n.label), l.label)) AS label
FROM _hw_label AS l
LEFT JOIN _hw_adj AS a ON a.src = l.id
LEFT JOIN _hw_label AS n ON n.id = a.dst
GROUP BY l.id, l.label
"""


def _components(con: duckdb.DuckDBPyConnection, seed_sql: str) -> None:
    """Label every node of ``seed_sql`` (id, label) with its component's smallest label (_hw_label)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE _hw_label AS {seed_sql}")
    while True:
        con.execute(_PROPAGATE)
        changed = con.execute("SELECT count(*) FROM _hw_next JOIN _hw_label USING (id) WHERE _hw_next.label <> _hw_label.label").fetchone()[0]
        con.execute("CREATE OR REPLACE TEMP TABLE _hw_label AS SELECT * FROM _hw_next")
        if not changed:
            return


def _spread_from_identified(con: duckdb.DuckDBPyConnection) -> None:
    """Multi-source BFS from the identified ids into _hw_person (id, person_id, linked_by, linked_at, link_event_id)."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _hw_person AS
        SELECT id, id AS person_id, 'root' AS linked_by, CAST(NULL AS TIMESTAMPTZ) AS linked_at,
               CAST(NULL AS VARCHAR) AS link_event_id, 0 AS round
        FROM _hw_identified
        """
    )
    round_ = 0
    while True:
        round_ += 1
        added = con.execute(
            f"""
            INSERT INTO _hw_person
            SELECT a.dst, p.person_id, a.event_type, a.event_ts, a.event_id, {round_}
            FROM _hw_person AS p
            JOIN _hw_adj AS a ON a.src = p.id
            WHERE p.round = {round_ - 1}
              AND a.dst NOT IN (SELECT id FROM _hw_person)
            QUALIFY row_number() OVER (PARTITION BY a.dst ORDER BY a.event_ts, a.event_id, p.person_id) = 1
            """
        ).fetchone()[0]
        if not added:
            return


def _stitched_at(con: duckdb.DuckDBPyConnection) -> None:
    """_hw_stitched (id, person_id, stitched_at) for the ids of _hw_person: the earliest event
    time by which links between ids of the same person, none of them later, connect the id to
    its person's root; -infinity for a root. A minimax (bottleneck) path, found as Bellman-Ford
    finds shortest paths (max for +, min for min), but relaxing only the links out of the ids
    whose value fell in the round before (the frontier, the roots first): a value falls only
    after a neighbour's did, and most ids settle in one round. At 1M users (2.5M ids) this
    takes 1.1-1.5 s of a 3.7-4.4 s resolution; a pass over every id per round took 3.0 s."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _hw_stitched AS
        SELECT id, person_id,
               CASE WHEN id = person_id THEN TIMESTAMPTZ '-infinity' ELSE TIMESTAMPTZ 'infinity' END AS stitched_at
        FROM _hw_person;
        CREATE OR REPLACE TEMP TABLE _hw_frontier AS SELECT * FROM _hw_stitched WHERE id = person_id;
        """
    )
    while True:
        # links to an id of another person (a refused merge) carry nothing: the join on person_id
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _hw_frontier AS
            SELECT s.id, s.person_id, b.stitched_at
            FROM (
                SELECT a.dst AS id, f.person_id, min(greatest(f.stitched_at, a.event_ts)) AS stitched_at
                FROM _hw_frontier AS f JOIN _hw_adj AS a ON a.src = f.id
                GROUP BY a.dst, f.person_id
            ) AS b
            JOIN _hw_stitched AS s ON s.id = b.id AND s.person_id = b.person_id
            WHERE b.stitched_at < s.stitched_at
            """
        )
        if not con.execute("SELECT count(*) FROM _hw_frontier").fetchall()[0][0]:
            return
        con.execute("UPDATE _hw_stitched AS s SET stitched_at = f.stitched_at FROM _hw_frontier AS f WHERE s.id = f.id")


def _held(con: duckdb.DuckDBPyConnection) -> str | None:
    """The key of the resolution ``con``'s temporary tables hold (``None``: none)."""
    try:
        rows = con.execute("SELECT k FROM _hw_resolved").fetchall()
    except duckdb.CatalogException:
        return None
    return rows[0][0] if rows else None


# A component without an identified id is named by its smallest alias user id ('1' sorts
# first), else its smallest id: an alias names the user id that survives (Segment spec), and
# that id is the one that will identify, so the person keeps its name when it does. Named by
# the smallest id alone, an alias legacy-u -> user-u made person "legacy-u", renamed "user-u"
# at user-u's first identify: every day since the alias restated (measured at 200k events a
# day: every earlier day, every day).
_ALIAS_TARGET_KEY = "CASE WHEN id IN (SELECT b FROM _hw_links WHERE event_type = 'alias') THEN '1' ELSE '2' END"


def _resolve(con: duckdb.DuckDBPyConnection, merge_identified_users: bool) -> None:
    """Resolve the links of ``con`` into _hw_person (id, person_id, linked_by, linked_at,
    link_event_id) and _hw_stitched (id, person_id, stitched_at), next to the graph's temporary tables
    (_hw_links, _hw_identified, ...)."""
    con.execute("DROP TABLE IF EXISTS _hw_resolved")
    con.execute(_GRAPH)
    if merge_identified_users:
        # sort key: identified ids ('0' prefix), then user ids of aliases ('1'), then the rest ('2')
        _components(
            con,
            f"SELECT id, CASE WHEN id IN (SELECT id FROM _hw_identified) THEN '0' ELSE {_ALIAS_TARGET_KEY} END || id AS label FROM _hw_nodes",
        )
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _hw_person AS
            SELECT l.id, substr(l.label, 2) AS person_id,
                   CASE WHEN l.id = substr(l.label, 2) THEN 'root' ELSE first.event_type END AS linked_by,
                   CASE WHEN l.id = substr(l.label, 2) THEN NULL ELSE first.event_ts END AS linked_at,
                   CASE WHEN l.id = substr(l.label, 2) THEN NULL ELSE first.event_id END AS link_event_id
            FROM _hw_label AS l
            LEFT JOIN (
                SELECT src, event_type, event_ts, event_id FROM _hw_adj
                QUALIFY row_number() OVER (PARTITION BY src ORDER BY event_ts, event_id) = 1
            ) AS first ON first.src = l.id
            """
        )
    else:
        _spread_from_identified(con)
        # components the BFS did not reach hold no identified id: one anonymous person each
        _components(con, f"SELECT id, {_ALIAS_TARGET_KEY} || id AS label FROM _hw_nodes WHERE id NOT IN (SELECT id FROM _hw_person)")
        con.execute(
            """
            INSERT INTO _hw_person
            SELECT l.id, substr(l.label, 2),
                   CASE WHEN l.id = substr(l.label, 2) THEN 'root' ELSE first.event_type END,
                   CASE WHEN l.id = substr(l.label, 2) THEN NULL ELSE first.event_ts END,
                   CASE WHEN l.id = substr(l.label, 2) THEN NULL ELSE first.event_id END,
                   -1
            FROM _hw_label AS l
            LEFT JOIN (
                SELECT src, event_type, event_ts, event_id FROM _hw_adj
                QUALIFY row_number() OVER (PARTITION BY src ORDER BY event_ts, event_id) = 1
            ) AS first ON first.src = l.id
            """
        )
    _stitched_at(con)


def _resolved(con: duckdb.DuckDBPyConnection, merge_identified_users: bool, key: str | None) -> None:
    """Make ``con``'s temporary tables hold the resolution of its links for ``key`` (see
    :func:`identity_map`), resolving only if they do not already."""
    held = f"{merge_identified_users}:{key}"
    if key is None or _held(con) != held:
        _resolve(con, merge_identified_users)
        if key is not None:  # after _resolve: a failed resolution leaves no key behind
            con.execute("CREATE OR REPLACE TEMP TABLE _hw_resolved AS SELECT CAST($k AS VARCHAR) AS k", {"k": held})


def identity_map(con: duckdb.DuckDBPyConnection, merge_identified_users: bool = False,
                 key: str | None = None) -> pa.Table:
    """``silver.identity_map`` from the ``silver.identity_links`` of catalog connection ``con``:
    a table with :data:`IDENTITY_MAP_SCHEMA`, sorted by id.

    Creates temporary tables ``_hw_*`` in ``con``. ``key`` names the links ``con`` holds (the
    caller's choice: their Delta version): a later call of this or :func:`refused` on ``con``
    with the same ``key`` and ``merge_identified_users`` reuses the resolution left in
    ``con``'s temporary tables instead of resolving again (``None``: always resolve), so the
    two identity tables of one build come from one resolution. Raises
    ``duckdb.CatalogException`` if ``silver.identity_links`` does not exist."""
    _resolved(con, merge_identified_users, key)
    return con.sql(
        """
        SELECT p.id, p.person_id, p.id IN (SELECT id FROM _hw_identified) AS identified,
               p.linked_by, p.linked_at, p.link_event_id,
               CASE WHEN p.id = p.person_id THEN NULL ELSE s.stitched_at END AS stitched_at
        FROM _hw_person AS p JOIN _hw_stitched AS s USING (id) ORDER BY p.id
        """
    ).to_arrow_table().cast(IDENTITY_MAP_SCHEMA)


def refused(con: duckdb.DuckDBPyConnection, merge_identified_users: bool = False,
            key: str | None = None) -> pa.Table:
    """``silver.identity_refused``, the links whose two ends resolve to different persons,
    from the ``silver.identity_links`` of ``con``: a table with
    :data:`IDENTITY_REFUSED_SCHEMA`, sorted by event_id. ``key`` and errors as for
    :func:`identity_map`."""
    _resolved(con, merge_identified_users, key)
    return con.sql(
        """
        SELECT l.event_id, l.event_type, l.event_ts AS linked_at, l.a AS id, l.b AS user_id,
               pa.person_id AS id_person_id, pb.person_id AS user_person_id,
               'would merge two identified users' AS reason
        FROM _hw_links AS l
        JOIN _hw_person AS pa ON pa.id = l.a
        JOIN _hw_person AS pb ON pb.id = l.b
        WHERE pa.person_id <> pb.person_id
        ORDER BY l.event_id
        """
    ).to_arrow_table().cast(IDENTITY_REFUSED_SCHEMA)
