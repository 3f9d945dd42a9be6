"""The collector: Segment HTTP Tracking API in, canonical events into the event log.

Modules, in request order: :mod:`.app` (routes, auth, gzip, limits, responses, group
commit) → :mod:`.segment` (wire format → ``EVENT_SCHEMA`` rows + bad rows; pure) using
:mod:`.tokens` (HMAC identifier tokens) → :mod:`.partitioning` (identity-keyed
partitions, Arrow IPC appends). :mod:`.server` runs it under uvicorn.
"""
