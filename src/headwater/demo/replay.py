"""Replay the bundled e-commerce dataset through the real Segment SDK.

Every CSV row becomes one ``analytics.track`` call of ``segment-analytics-python``
pointed at the collector, with the row's original timestamp as event time and a
``messageId`` derived from the row's fields (uuid5), so the dataset's exact duplicate
rows (and a re-run of the demo) arrive as re-sends of the same event.
"""

from __future__ import annotations

import datetime as dt
import gzip
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl
from segment.analytics import Client

NAMESPACE = uuid.UUID("6f1c3b1e-5d0a-4e47-9a51-4f1f1c9b2a10")


def dataset_path() -> Path:
    """Path of the bundled ``ecom.csv.gz``."""
    return Path(str(resources.files("headwater.demo") / "data" / "ecom.csv.gz"))


def load(path: Path | None = None) -> pl.DataFrame:
    """The dataset sorted by timestamp (stable), ``timestamp`` parsed as UTC datetime[us]."""
    with gzip.open(path or dataset_path(), "rb") as f:
        df = pl.read_csv(f.read())
    return df.with_columns(
        pl.col("timestamp").str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="us").dt.replace_time_zone("UTC")
    ).sort("timestamp", maintain_order=True)


def message_id(user_id: str, session_id: str, event: str, timestamp: str) -> str:
    """Deterministic messageId of a dataset row: uuid5 over its identifying fields."""
    return str(uuid.uuid5(NAMESPACE, f"{user_id}|{session_id}|{event}|{timestamp}"))


@dataclass
class ReplayResult:
    sent: int
    failed_batches: int


def replay(url: str, write_key: str, df: pl.DataFrame | None = None, on_sent: Callable[[int], None] | None = None) -> ReplayResult:
    """Send every row of ``df`` (default: the bundled dataset) with the Segment SDK; returns
    once the SDK has flushed. ``failed_batches`` counts uploads the SDK gave up on."""
    df = load() if df is None else df
    failures: list[Exception] = []
    client = Client(
        write_key,
        host=url,
        gzip=True,
        thread=2,
        upload_size=250,
        max_queue_size=len(df) + 1,  # the SDK drops messages when its queue is full
        on_error=lambda e, batch: failures.append(e),
        max_retries=3,
    )
    sent = 0
    for row in df.iter_rows(named=True):
        ts: dt.datetime = row["timestamp"]
        client.track(
            user_id=row["user_id"],
            event=row["event"],
            timestamp=ts,
            message_id=message_id(row["user_id"], row["session_id"], row["event"], ts.strftime("%Y-%m-%d %H:%M:%S")),
            properties={
                "session_id": row["session_id"],
                "acquisition_channel": row["acquisition_channel"],
                "user_cohort": row["user_cohort"],
                "user_lifecycle": row["user_lifecycle"],
            },
            context={"device": {"type": row["platform"]}},
        )
        sent += 1
        if on_sent and sent % 500 == 0:
            on_sent(sent)
    client.flush()
    client.join()
    if on_sent:
        on_sent(sent)
    return ReplayResult(sent, len(failures))
