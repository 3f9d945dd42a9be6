"""Late data: which ``ds`` partitions changed in an input table, and what must be restated.

Detection (:func:`changed_days`) diffs two snapshots of a Delta table: the data files of the
current version that were not in the version last seen (the sensor's cursor) are what was
added since, and their ``ds`` partition values (from the Delta log's add actions, no data
read) are the days that changed. A file with ``numRecords = 0`` changes nothing. This is
exact for appends — the stream's only write to bronze — and conservative for rewrites
(a compaction re-adds files of unchanged days: those days are restated needlessly, never
missed).

Propagation (:func:`restatement`). When an input of a model changes on day ``d``, the
model's partitions ``d + lo .. d + hi`` may change, ``(lo, hi) = Model.affected_days``: a
partition ``p`` reads ``p - lookback .. p + lookahead``, so ``lo = -lookahead``, ``hi =
lookback`` — the trailing-window rule: ``gold.sessions`` on ``ds`` reads ``ds-1 .. ds+1``, so a
change on ``d`` reaches ``d-1 .. d+1``; a cumulative state (``silver.person_state`` …) is
computed from its own partition of the day before, so a change on ``d`` reaches every later
state (``hi = None``), and the readers of those states with it (DAU / WAU / MAU of ``d ..``,
retention cohorts from ``d-366``). ``None`` means unbounded. Only what is already built is restated (a day never built is the
schedule's or a backfill's to build): affected days are clipped to each model's built
range. Changes flow in ``MODELS`` order, so a restated silver day propagates into gold.
Unpartitioned models (identity map, ``dim_user``) are rebuilt whole when an input changed;
how the identity map's change reaches ``silver.events`` is found by content after the
rebuild (``deferred``, see :mod:`headwater.orchestrate.sensor`).

Staleness (:func:`stale_readers`): a reader partition is stale when an input partition it
reads was materialised after it (event-log storage ids) — how the day the schedule just
built reaches the earlier retention cohorts, sessions and funnels that read it.

Runs (:func:`runs`). Dagster runs one partition range per run, the same for every asset in
it, and orders the steps of a run, not runs. Models to restate that read one another
therefore share a run (inputs are rebuilt before their readers), one per maximal range of
contiguous dirty days; unrelated ones get runs of their own. The price: an upstream model is
rebuilt over its readers' wider window (a late day ``d`` rebuilds ``silver.events`` on every
day gold restates — idempotent, but with the states' reach that is ``d ..`` the last built
day, and with retention's ``d-366 ..``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from headwater.errors import NotFoundError
from headwater.lake.store import Lake
from headwater.models.dag import Model

log = logging.getLogger(__name__)

Days = set[dt.date]


def _files(lake: Lake, table: str, version: int | None = None) -> pa.Table:
    """Add actions of a snapshot: ``path``, ``ds`` (date32), ``num_records`` (null if unknown)."""
    adds = lake.add_actions(table, version)
    return pa.table(
        {
            "path": adds.column("path"),
            "ds": adds.column("partition.ds").cast(pa.date32()),
            "num_records": adds.column("num_records"),
        }
    )


def changed_days(lake: Lake, table: str, since_version: int | None) -> tuple[int, Days]:
    """``(current version, ds of rows added after since_version)`` of ``table``.

    ``since_version=None`` means "from the beginning": every ``ds`` with rows. If
    ``since_version`` can no longer be loaded (its log was cleaned up), every ``ds`` with
    rows is returned (restating too much is safe, missing a day is not) and a warning is
    logged. :class:`headwater.errors.NotFoundError` if there is no table."""
    version = lake.version(table)
    if since_version is not None and since_version >= version:
        return version, set()
    files = _files(lake, table, version)
    if since_version is not None:
        try:
            before = _files(lake, table, since_version).column("path")
            files = files.filter(pc.invert(pc.is_in(files.column("path"), value_set=before)))
        except NotFoundError as e:
            log.warning("%s: version %s not loadable (%s); treating every ds as changed", table, since_version, e)
    counts = files.column("num_records")
    files = files.filter(pc.or_kleene(pc.is_null(counts), pc.greater(counts, 0)))
    return version, set(pc.unique(files.column("ds")).to_pylist())


ALWAYS = (dt.date.min, dt.date.max)
"""The ``built`` range of an unpartitioned model that exists: it covers every day."""


def _days(first: dt.date, last: dt.date) -> Iterable[dt.date]:
    return (first + dt.timedelta(days=i) for i in range((last - first).days + 1))


@dataclass
class Restatement:
    """What to rebuild: ``days`` of partitioned models, ``whole`` unpartitioned models (in
    ``MODELS`` order)."""

    days: dict[str, Days] = field(default_factory=dict)
    whole: list[str] = field(default_factory=list)


def restatement(
    models: tuple[Model, ...],
    changed: dict[str, Days],
    built: dict[str, tuple[dt.date, dt.date] | None],
    seeds: dict[str, Days] | None = None,
    deferred: frozenset[str] = frozenset(),
) -> Restatement:
    """What must be rebuilt after the input tables in ``changed`` changed on the given days.

    ``built`` is each model's built range (inclusive; :data:`ALWAYS` for an unpartitioned
    model that exists; ``None`` or absent: never built, nothing to restate). ``seeds`` are
    model days known stale by content (e.g. ``silver.events`` days whose ``person_id`` no
    longer matches the identity map). An unpartitioned model is rebuilt whole when an input
    changed. Its partitioned readers then need every built day — unless the table is in
    ``deferred``: its stale reader days are found by content once it has been rebuilt (the
    sensor's next evaluation), which is far narrower. ``models`` must be in dependency order."""
    seeds = seeds or {}
    dirty: dict[str, Days] = {t: set(days) for t, days in changed.items()}
    rebuilt: set[str] = set()
    out = Restatement()
    for model in models:
        bounds = built.get(model.table)
        if bounds is None:
            continue
        if not model.partitioned:
            if any(t in dirty or t in rebuilt for t in model.inputs):
                out.whole.append(model.table)
                rebuilt.add(model.table)
            continue
        lo, hi = model.affected_days
        days: Days = {d for d in seeds.get(model.table, ()) if bounds[0] <= d <= bounds[1]}
        for table in model.inputs:
            if table in rebuilt and table not in deferred:
                days.update(_days(*bounds))
            for d in dirty.get(table, ()):
                first = bounds[0] if lo is None else max(bounds[0], d + dt.timedelta(days=lo))
                last = bounds[1] if hi is None else min(bounds[1], d + dt.timedelta(days=hi))
                if first <= last:
                    days.update(_days(first, last))
        if days and model.cumulative:  # each later state is computed from the one before
            days.update(_days(min(days), bounds[1]))
        if days:
            out.days[model.table] = days
            dirty[model.table] = dirty.get(model.table, set()) | days
    return out


def stale_readers(
    models: tuple[Model, ...],
    materialised: dict[str, dict[dt.date, int]],
    latest: dict[str, dict[dt.date, int]],
    built: dict[str, tuple[dt.date, dt.date] | None],
) -> dict[str, Days]:
    """Partitions made stale by newer materialisations of their inputs (Dagster's own notion
    of staleness, with the models' reach): ``{reader: days}``.

    ``materialised`` holds, per partitioned model, the event-log storage id of each day
    materialised since the sensor last looked; ``latest`` the storage id of each reader
    partition's latest materialisation. A built reader partition ``r`` is stale when an input
    day ``p`` with ``r`` in ``p + affected_days`` was materialised after ``r`` was (a larger
    storage id). A reader built in the same run after its input, or later, is not: a
    backfill is never stale. The case this is for: the daily run builds day ``D``, which
    the retention cohorts ``D-96 .. D-1``, the sessions of ``D-1`` and the funnels started in
    ``D-7 .. D-1`` read — the run built only ``D``, so those are restated."""
    out: dict[str, Days] = {}
    for reader in models:
        bounds = built.get(reader.table)
        if not reader.partitioned or bounds is None:
            continue
        lo, hi = reader.affected_days
        need: dict[dt.date, int] = {}
        # a cumulative state reads its own partition of the day before: one materialised after
        # a later one (a backfill, a restatement) makes every later one stale
        reads = [(t, lo) for t in reader.inputs] + ([(reader.table, 1)] if reader.cumulative else [])
        for table, lo in reads:
            for p, storage_id in materialised.get(table, {}).items():
                first = bounds[0] if lo is None else max(bounds[0], p + dt.timedelta(days=lo))
                last = bounds[1] if hi is None else min(bounds[1], p + dt.timedelta(days=hi))
                for r in (_days(first, last) if first <= last else ()):
                    need[r] = max(need.get(r, 0), storage_id)
        seen = latest.get(reader.table, {})
        if stale := {r for r, storage_id in need.items() if seen.get(r, -1) < storage_id}:
            out[reader.table] = stale
    return out


def runs(plan: Restatement, models: tuple[Model, ...]) -> list[tuple[dt.date | None, dt.date | None, list[str]]]:
    """The runs that carry out ``plan``: ``[(start, end, tables), ...]``, tables in ``models``
    (dependency) order.

    Models to rebuild that read one another must share a run (Dagster orders the steps of
    a run, not runs); unrelated ones need not, and get their own runs, so restating 96 days
    of retention does not rebuild 96 days of sessions. Within a group of connected models,
    one run per maximal range of contiguous dirty days, selecting the models dirty inside it;
    the group's ``whole`` models join its first run (``(None, None, whole)`` if none of the
    group's partitioned models is dirty)."""
    dirty = set(plan.days) | set(plan.whole)
    group = {t: t for t in dirty}  # union-find over "reads" edges between dirty models

    def root(t: str) -> str:
        while group[t] != t:
            t = group[t]
        return t

    for model in models:
        for table in model.inputs:
            if model.table in dirty and table in dirty:
                group[root(model.table)] = root(table)
    out: list[tuple[dt.date | None, dt.date | None, list[str]]] = []
    for head in [m.table for m in models if m.table in dirty and root(m.table) == m.table]:
        members = [m.table for m in models if m.table in dirty and root(m.table) == head]
        days = sorted(set().union(*(plan.days.get(t, set()) for t in members)))
        spans: list[tuple[dt.date, dt.date]] = []
        for d in days:
            if spans and d - spans[-1][1] == dt.timedelta(days=1):
                spans[-1] = (spans[-1][0], d)
            else:
                spans.append((d, d))
        whole = [t for t in members if t in plan.whole]
        for i, (start, end) in enumerate(spans):
            selected = {t for t in members if any(start <= d <= end for d in plan.days.get(t, ()))}
            out.append((start, end, [t for t in members if t in selected or (i == 0 and t in whole)]))
        if not spans:
            out.append((None, None, whole))
    return sorted(out, key=lambda run: (run[0] or dt.date.min, [m.table for m in models].index(run[2][0])))
