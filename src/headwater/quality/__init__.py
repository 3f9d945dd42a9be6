"""Data quality: SLA and anomaly checks over the lake and the log, their ``quality.results``
table and alerts (:mod:`headwater.quality.checks`, :mod:`headwater.quality.anomaly`,
:mod:`headwater.quality.alerts`)."""
