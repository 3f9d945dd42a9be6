"""The collector: Segment HTTP Tracking API and PostHog capture in, canonical events into the event log.

Modules, in request order: :mod:`.app` (routes, auth, gzip, limits, responses, group
commit) → :mod:`.segment` / :mod:`.posthog` (wire format → ``EVENT_SCHEMA`` rows + bad rows;
pure) using :mod:`.tokens` (HMAC identifier tokens) → contract validation
(:mod:`headwater.registry.validate`) → :mod:`.pii` (the source's PII policy) →
:mod:`.partitioning` (identity-keyed partitions, Arrow IPC appends). :mod:`.server` runs it
under uvicorn; :mod:`.badrows` lists and replays the failed events.
"""
