"""The ingest core shared by every source (HTTP wire formats, files, server logs, CDC).

- :mod:`.canonical`    typed event columns → ``EVENT_SCHEMA`` table (event time, derived
  event ids, client surface), and :class:`~.canonical.Normalized`, a request's outcome
- :mod:`.tokens`       identifier tokenisation (keyed HMAC), never a raw id in the log
- :mod:`.pii`          the per-source PII policy applied to JSON columns and text
- :mod:`.badrows`      the typed :class:`~.badrows.BadRow`, payload redaction, the bad-rows append
- :mod:`.partitioning` events split over the ``events`` topic by identity key

Wire adapters (:mod:`headwater.collector.segment`, :mod:`headwater.collector.posthog`) and
sources (:mod:`headwater.sources`) decode their input into these; nothing here knows HTTP.
"""
