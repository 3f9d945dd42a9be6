"""The event log: topics of partitions of offsets, one offset per event (contract:
:mod:`headwater.log.base`), opened by URL with :func:`open_log` (:mod:`headwater.log.factory`)."""

from headwater.log.base import Append, DeadLetter, EventLog, ReadResult, read_schema
from headwater.log.factory import open_log

__all__ = ["Append", "DeadLetter", "EventLog", "ReadResult", "open_log", "read_schema"]
