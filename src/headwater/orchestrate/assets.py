"""Every model of the batch DAG as a Dagster asset, derived from :func:`headwater.models.dag.dag`.

One :class:`headwater.models.dag.Model` becomes one asset — the fixed silver and gold models,
one typed ``silver.evt_*`` model per registered event name and one ``silver.dim_*`` model per
CDC dimension, as the DAG holds them when the code location loads:

* key ``[layer, name]`` of ``Model.table`` (``silver.events`` → ``silver/events``), group = layer;
* partitions: :func:`daily_partitions` — one partition per UTC day ``ds`` (``YYYY-MM-DD``);
  an unpartitioned model (identity map, SCD2 dimensions: global over history, replaced
  whole) is an unpartitioned asset, rebuilt by any run that selects it;
* deps: ``Model.inputs``, with the partition mapping of what partition ``p`` reads
  (:func:`partition_mapping`): ``p - lookback_days .. p + lookahead_days`` as a
  ``TimeWindowPartitionMapping`` (``gold.active_users`` on ``ds`` reads ``silver.events``
  ``ds-27 .. ds``); every partition (``AllPartitionMapping``) for a model with ``history``
  — Dagster cannot say "every day up to ``p + lookahead``", so the lineage over-approximates.
  A cumulative state's read of its own partition of the day before is not declared (Dagster
  asks a self-dependent asset for one partition per run): the runner resumes it from its
  latest stored partition, and the late-data sensor restates its later partitions;
  An input no model produces (``bronze.events``, ``bronze.cdc_*``: written by the stream and
  the CDC readers) is an external asset (``AssetSpec``) with the same daily partitions:
  shown in the lineage, never materialised here;
* body: :func:`headwater.models.run.run_model` over the run's partition window — one
  partition, or a whole range in one run (``BackfillPolicy.single_run()``: a 180-day backfill
  is one atomic overwrite per table, not 180);
* retries: the ``RetryPolicy`` (exponential backoff and jitter) retries only
  :class:`headwater.errors.TransientError` (a lost Delta commit race, an I/O error); any
  other error (a missing input table, SQL that does not bind, a row that does not fit the
  schema) fails at once with ``Failure(allow_retries=False)`` naming the model.

Each materialisation records ``rows`` (rows written), ``ds_start`` / ``ds_end`` (partitioned
models) and ``input_versions`` (the Delta version of every input table, read *before* the
model ran: a lower bound of the snapshot it saw; the late-data sensor starts from it).
"""

import datetime as dt
import time
import warnings
from importlib import resources
from typing import Callable

from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    Backoff,
    BetaWarning,
    DailyPartitionsDefinition,
    Failure,
    Jitter,
    MaterializeResult,
    PartitionMapping,
    RetryPolicy,
    TimeWindowPartitionMapping,
    asset,
)

from headwater.config import Home
from headwater.errors import TransientError
from headwater.lake.store import Lake
from headwater.models import run as models_run
from headwater.models.dag import Model

Runner = Callable[[Home, Model, dt.date, dt.date], int]
"""Builds one model for ``ds`` in ``[start, end]`` and returns rows written
(default :func:`headwater.models.run.run_model`)."""

DEFAULT_RETRY = RetryPolicy(max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)
"""Up to 3 retries after 2, 4, 8 s (± jitter) of a :class:`TransientError` (a Delta commit
conflict with another writer, an I/O error): such failures clear within seconds."""


def asset_key(table: str) -> AssetKey:
    """``"silver.events"`` → ``AssetKey(["silver", "events"])``."""
    return AssetKey(table.split("."))


def table_name(key: AssetKey) -> str:
    """Inverse of :func:`asset_key`."""
    return ".".join(key.path)


def first_ds(home: Home) -> dt.date:
    """First daily partition: the setting ``batch.first_ds`` if set, else the first ``ds``
    with rows in ``bronze.events``, else today (UTC)."""
    if home.settings.batch.first_ds is not None:
        return home.settings.batch.first_ds
    bounds = Lake.of(home).ds_range("bronze.events")
    return bounds[0] if bounds else dt.datetime.now(dt.timezone.utc).date()


def daily_partitions(start: dt.date) -> DailyPartitionsDefinition:
    """UTC days from ``start`` to yesterday: a day's partition exists once the day is over
    (``end_offset=0``), so the daily schedule always builds a complete day."""
    return DailyPartitionsDefinition(start_date=start.isoformat(), timezone="UTC")


def description(model: Model) -> str:
    """The table's catalog description and grain, then (a SQL model) the explanation of its
    logic from the SQL file's header comment."""
    spec = model.spec
    text = f"{spec.description}\n\nGrain: {spec.grain}."
    if model.sql_file is None:
        return text
    try:
        sql = resources.files("headwater.models").joinpath(model.sql_file).read_text()
    except FileNotFoundError:  # surfaces as the run's error, not at load time
        return f"{text}\n\n{model.sql_file} not found"
    header = []
    for line in sql.splitlines()[2:]:  # after the table name and the pointer to the catalog
        if not line.startswith("--"):
            break
        header.append(line[2:].removeprefix(" "))
    return f"{text}\n\n" + "\n".join(header).strip()


def partition_mapping(model: Model) -> PartitionMapping | None:
    """How ``model``'s partition ``p`` maps to the partitions of a partitioned input it reads."""
    if model.history:
        return AllPartitionMapping()
    if model.lookback_days or model.lookahead_days:
        return TimeWindowPartitionMapping(start_offset=-model.lookback_days, end_offset=model.lookahead_days)
    return None


def input_versions(lake: Lake, model: Model) -> dict[str, int]:
    """Current Delta version of each existing input table of ``model``."""
    return {table: lake.version(table) for table in model.inputs if lake.exists(table)}


def window_dates(context: AssetExecutionContext) -> tuple[dt.date, dt.date]:
    """The run's partition window as inclusive ``(start, end)`` ds dates."""
    window = context.partition_time_window  # [start, end) at UTC midnights
    return window.start.date(), (window.end - dt.timedelta(days=1)).date()


def model_asset(
    home: Home,
    model: Model,
    partitions: DailyPartitionsDefinition,
    partitioned_inputs: set[str],
    retry_policy: RetryPolicy,
    runner: Runner,
) -> AssetsDefinition:
    """The asset of one model (see the module docstring)."""
    mapping = partition_mapping(model)
    deps = [AssetDep(asset_key(t), partition_mapping=mapping if t in partitioned_inputs else None) for t in model.inputs]
    layer = model.table.split(".")[0]

    @asset(
        key=asset_key(model.table),
        deps=deps,
        partitions_def=partitions if model.partitioned else None,
        backfill_policy=BackfillPolicy.single_run() if model.partitioned else None,
        retry_policy=retry_policy,
        group_name=layer,
        kinds={"duckdb", "delta"},
        description=description(model),
        metadata={
            "table": model.table,
            "lookback_days": model.lookback_days,
            "lookahead_days": model.lookahead_days,
            "history": model.history,
            "cumulative": model.cumulative,
        },
    )
    def build(context: AssetExecutionContext) -> MaterializeResult:
        # An unpartitioned model ignores the range: it is replaced whole.
        start, end = window_dates(context) if model.partitioned else (dt.date.today(),) * 2
        span = f"{start}..{end}" if model.partitioned else "(whole table)"
        versions = input_versions(Lake.of(home), model)
        t0 = time.perf_counter()
        try:
            rows = runner(home, model, start, end)
        except TransientError:
            raise  # the RetryPolicy retries it
        except Exception as e:
            raise Failure(f"{model.table} {span}: {type(e).__name__}: {e}", allow_retries=False) from e
        seconds = time.perf_counter() - t0
        context.log.info(f"{model.table} {span}: {rows} rows in {seconds:.2f} s")
        metadata = {"rows": rows, "seconds": round(seconds, 3), "input_versions": versions}
        if model.partitioned:
            metadata |= {"ds_start": start.isoformat(), "ds_end": end.isoformat()}
        return MaterializeResult(metadata=metadata)

    return build


def external_spec(table: str, partitions: DailyPartitionsDefinition) -> AssetSpec:
    """An input no model produces (e.g. ``bronze.events``, appended by the stream)."""
    layer = table.split(".")[0]
    return AssetSpec(
        asset_key(table),
        partitions_def=partitions,
        group_name=layer,
        kinds={"delta"},
        description=f"{table}: written outside the batch layer (stream sink, CDC reader); observed, never materialised here.",
    )


def model_assets(
    home: Home,
    models: tuple[Model, ...],
    partitions: DailyPartitionsDefinition,
    retry_policy: RetryPolicy = DEFAULT_RETRY,
    runner: Runner = models_run.run_model,
) -> tuple[list[AssetsDefinition], list[AssetSpec]]:
    """The assets of ``models`` and the external specs of the inputs none of them produces."""
    produced = {m.table for m in models}
    external = sorted({t for m in models for t in m.inputs if t not in produced})
    partitioned_inputs = {m.table for m in models if m.partitioned} | set(external)
    with warnings.catch_warnings():  # backfill_policy is "beta" in Dagster 1.13: said once here, not per asset
        warnings.simplefilter("ignore", BetaWarning)
        assets = [model_asset(home, m, partitions, partitioned_inputs, retry_policy, runner) for m in models]
    return assets, [external_spec(t, partitions) for t in external]
