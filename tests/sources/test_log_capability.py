"""Sources on a log without ``atomic_multi_topic_append``: a batch's events and bad rows are
two appends; a failure between them raises with the events stored, and a rerun lands every
event in bronze once and the bad rows once."""

from __future__ import annotations

import pytest

from headwater.errors import TransientError
from headwater.sources.files import import_file
from headwater.sources.mapping import Mapping
from tests.helpers import PerTopicLog, read_topic


def test_import_appends_events_then_bad_rows_and_a_rerun_completes_it(home, tmp_path, bronze):
    path = tmp_path / "e.csv"
    path.write_text("user,event,ts\nu1,Click,2024-03-01T12:00:00Z\nu2,Click,yesterday\nu3,Click,2024-03-01T12:00:02Z\n")
    m = Mapping(timestamp="ts", user_id="user", event="event")
    log = PerTopicLog.from_url(home.settings.log_url)
    log.fail_topic = "bad_rows"
    with pytest.raises(TransientError, match="broker unavailable"):
        import_file(home, path, m, log=log)
    assert read_topic(log, "events").num_rows >= 1 and log.end_offsets("bad_rows") == {0: 0}
    log.fail_topic = None
    counts = import_file(home, path, m, log=log)
    assert (counts.accepted, sum(counts.rejected.values())) == (2, 1)
    assert read_topic(log, "bad_rows").num_rows == 1
    assert bronze("SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM bronze.events") == [{"n": 2, "ids": 2}]
    log.close()
