"""Postgres change data capture: :mod:`.pgoutput` (protocol decoder), :mod:`.reader` (slot →
``bronze.cdc_<table>``, exactly once), :mod:`.scd2` (``silver.dim_account``)."""
