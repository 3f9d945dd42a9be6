"""A build writes a Delta checkpoint of a table each CHECKPOINT_EVERY commits, so that opening
it replays few JSON commits however long its history (models.run.checkpoint)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from headwater.config import Home
from headwater.demo import generate
from headwater.lake.store import Lake
from headwater.models.run import CHECKPOINT_EVERY, checkpoint


def test_a_checkpoint_when_the_commits_cross_a_multiple(tmp_path):
    home = Home(tmp_path)
    for k in range(CHECKPOINT_EVERY + 2):  # versions 0 .. CHECKPOINT_EVERY + 1, one commit each
        generate.write_day(home, 5, dt.date(2024, 3, 1) + dt.timedelta(days=k))
    lake = Lake.of(home)
    log = Path(lake.uri("bronze.events")) / "_delta_log"
    assert lake.version("bronze.events") == CHECKPOINT_EVERY + 1
    checkpoint(lake, {"bronze.events": 1})  # CHECKPOINT_EVERY + 1 alone: no multiple crossed
    assert not list(log.glob("*.checkpoint.parquet"))
    checkpoint(lake, {"bronze.events": 2})  # CHECKPOINT_EVERY was among the two commits
    assert [p.name for p in log.glob("*.checkpoint.parquet")] == [f"{CHECKPOINT_EVERY + 1:020d}.checkpoint.parquet"]
    assert Lake.of(home).ds_range("bronze.events") == (dt.date(2024, 3, 1), dt.date(2024, 3, 1) + dt.timedelta(days=CHECKPOINT_EVERY + 1))
