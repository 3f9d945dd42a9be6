"""Schema registry: a JSON Schema contract per event name, versioned, with Confluent
Schema Registry's compatibility modes.

Modules: :mod:`.registry` (subjects, versions, register / check), :mod:`.compat` (the
compatibility rules), :mod:`.store` (files under the home, or PostgreSQL), :mod:`.validate`
(the collector's per-event validation), :mod:`.typed_tables` (``silver.evt_<name>``).
"""
