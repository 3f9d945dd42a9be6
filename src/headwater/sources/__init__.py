"""Sources besides the HTTP collector: file exports, server logs and Postgres CDC.

Every source ends where the collector ends — canonical events (``headwater.events.EVENT_SCHEMA``)
with tokenised identifiers, appended as Arrow IPC records to the same event log, bad rows to the
``bad_rows`` topic — so the stream processor and the batch models treat them like HTTP events.

- :mod:`.mapping`   column mapping → one DuckDB query that maps, validates and derives event ids
- :mod:`.canonical` mapped Arrow batches → canonical events + bad rows → the event log
- :mod:`.lines`     line-oriented input (JSON lines, ``key=value | …``) read in byte ranges
- :mod:`.files`     ``headwater import PATH``: CSV, JSON lines, Parquet
- :mod:`.serverlog` ``headwater logs``: server logs, resumable from a stored byte offset
- :mod:`.cdc`       Postgres logical replication → ``bronze.cdc_<table>`` + ``silver.dim_account``
"""
