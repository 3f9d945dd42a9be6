"""The collector: Segment HTTP Tracking API and PostHog capture in, canonical events into the event log.

Modules, in request order: :mod:`.app` (routes, lifespan; thin) → :mod:`.collector` (the
request path, :class:`~.collector.Collector`) using :mod:`.auth` (write keys, Basic auth,
auth-failure rate limit) and :mod:`.body` (gzip, size limits) → the wire adapters
:mod:`.segment` / :mod:`.posthog` (wire format → canonical events + bad rows; pure; their
shared limits and :class:`~.wire.Wire` in :mod:`.wire`) over the ingest core
(:mod:`headwater.ingest`) → contract validation (:mod:`headwater.registry.validate`) → the
source's PII policy → the log by identity partition. :mod:`.server` runs it under uvicorn,
one worker per process (``collector.workers`` processes share the port and the log);
:mod:`.badrows` lists and replays the failed events.
"""
