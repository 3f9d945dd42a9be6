"""Switching stream engines on one home: which engine last committed the stream's consumer group.

Both engines of ``stream.engine`` — headwater's (:mod:`headwater.stream.processor`) and Spark
Structured Streaming (:mod:`headwater.stream.spark.runner`) — consume the log as consumer group
:data:`~headwater.events.STREAM_GROUP` and commit its offsets after each micro-batch, but
each resumes from its own checkpoint. After a switch, the engine that starts again finds its
checkpoint behind the group: the other engine consumed (and wrote to the lake) what lies in
between. It must start where the group stands — but only in that situation: a group ahead of
a checkpoint for any other reason (a restored checkpoint, a foreign committer) is a fault to
report, not to paper over.

So each engine records itself as the group's committer (:func:`record`) in one small file
under the home's checkpoints (``checkpoints/<group>.committer.json``, written atomically)
*before* its first group commit in a process; an engine adopts the group's offsets only when
:func:`last_committer` names the other engine. Written first, the marker can name an engine
whose commit did not happen (a crash in between): the group then is not ahead, and nothing
is adopted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from headwater.config import Home
from headwater.events import STREAM_GROUP
from headwater.files import write_atomic

EMBEDDED, SPARK = "embedded", "spark"  # values of setting stream.engine

# What the engine taking over says (one log line): state that stays with each engine.
NOT_CARRIED = "dedup state and open windows do not carry across engines"


def marker_path(home: Home) -> Path:
    """The record's file: ``checkpoints/<group>.committer.json`` of ``home``."""
    return home.checkpoint_dir(f"{STREAM_GROUP}.committer.json")


def last_committer(home: Home) -> str | None:
    """The engine (:data:`EMBEDDED`, :data:`SPARK`) that last committed ``home``'s stream
    consumer group; ``None`` if none recorded itself (a home from before this record)."""
    try:
        return json.loads(marker_path(home).read_text())["engine"]
    except FileNotFoundError:
        return None


def record(home: Home, engine: str) -> None:
    """Record ``engine`` as the committer of ``home``'s stream consumer group (call before
    its first group commit; module doc). ``{"engine", "recorded_ms"}`` (ms since epoch)."""
    write_atomic(marker_path(home), json.dumps({"engine": engine, "recorded_ms": int(time.time() * 1000)}).encode())


def ahead(group: dict[int, int], own: dict[int, int]) -> dict[int, int]:
    """The partitions (``{partition: group offset}``) where the group's committed offset is
    past ``own`` (a checkpoint's next offsets; a partition missing from it counts as 0)."""
    return {p: o for p, o in group.items() if o > own.get(p, 0)}
