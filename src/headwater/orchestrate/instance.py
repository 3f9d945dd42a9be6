"""Dagster's state for one installation: ``DAGSTER_HOME = <HEADWATER_HOME>/dagster``.

The embedded default keeps runs, event logs (materialisations, asset check results),
schedule and sensor ticks in SQLite files under ``<home>/dagster/storage`` (Dagster's
``SqliteStorage``), configured by the ``dagster.yaml`` written here. Runs that the daemon
launches (schedule, sensor, backfills from the UI) go through the ``QueuedRunCoordinator``
with one run at a time: every run overwrites Delta partitions, and on one machine one writer
at a time is both safe (no commit conflicts) and as fast as the two cores allow.

At scale the same ``dagster.yaml`` points ``storage`` at Postgres (``storage: postgres:``)
and raises ``max_concurrent_runs``; nothing else changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from headwater.config import Home

if TYPE_CHECKING:
    from dagster import DagsterInstance

DAGSTER_YAML = """\
# Written by headwater (headwater.orchestrate.instance); edit freely, it is not overwritten.
storage:
  sqlite:
    base_dir: {storage}
local_artifact_storage:
  module: dagster._core.storage.root
  class: LocalArtifactStorage
  config:
    base_dir: {home}
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 1
telemetry:
  enabled: false
"""


def dagster_home(home: Home) -> Path:
    """``<home>/dagster``, created with its ``dagster.yaml`` if absent (an existing file is kept).

    Use it as ``DAGSTER_HOME`` for Dagster's processes (:mod:`headwater.orchestrate.server`)."""
    path = home.root / "dagster"
    config = path / "dagster.yaml"
    if not config.exists():
        path.mkdir(parents=True, exist_ok=True)
        tmp = config.with_suffix(".tmp")
        tmp.write_text(DAGSTER_YAML.format(home=path, storage=path / "storage"))
        tmp.replace(config)
    return path


def instance(home: Home) -> DagsterInstance:
    """The persistent Dagster instance of ``home`` (SQLite storage under ``<home>/dagster``).

    The caller should ``dispose()`` it (or use it as a context manager)."""
    from dagster import DagsterInstance  # here: ``headwater up`` needs dagster_home, not Dagster

    return DagsterInstance.from_config(str(dagster_home(home)))
