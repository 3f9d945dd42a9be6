import datetime as dt

import pytest

from headwater.stream.pipeline import DEFAULT_PIPELINE, Aggregate, Hopping, Measure, Pipeline, Session, Tumbling, parse_duration


def test_default_pipeline_round_trips_through_dict():
    assert Pipeline.from_dict(DEFAULT_PIPELINE.to_dict()) == DEFAULT_PIPELINE
    assert [a.table for a in DEFAULT_PIPELINE.aggregates] == [
        "realtime.events_per_minute",
        "realtime.users_per_minute",
        "realtime.users_per_hour",
        "realtime.sessions",
    ]


def test_pipeline_loads_from_toml(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(
        """
name = "shop"
[dedup]
ttl = "2h"
[watermark]
delay = "90s"
idle_timeout = "500ms"
[[aggregates]]
name = "revenue"
window = {type = "hopping", size = "10m", slide = "5m"}
group_by = ["platform"]
measures = [{name = "orders", kind = "count"}, {name = "buyers", kind = "distinct", column = "user_id", lg_k = 10}]
output_mode = "update"
allowed_lateness = "1m"
"""
    )
    p = Pipeline.from_toml(path)
    assert p.dedup.ttl == dt.timedelta(hours=2)
    assert p.watermark.delay == dt.timedelta(seconds=90) and p.watermark.idle_timeout == dt.timedelta(milliseconds=500)
    (agg,) = p.aggregates
    assert agg.window == Hopping(dt.timedelta(minutes=10), dt.timedelta(minutes=5))
    assert agg.measures == (Measure.count("orders"), Measure.distinct("buyers", "user_id", lg_k=10))
    assert (agg.output_mode, agg.allowed_lateness) == ("update", dt.timedelta(minutes=1))
    assert Pipeline.from_dict(p.to_dict()) == p


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Hopping(dt.timedelta(minutes=5), dt.timedelta(minutes=2)), "window.size: must be a multiple of window.slide"),
        (lambda: Tumbling(dt.timedelta(0)), "window.size: must be positive"),
        (lambda: Measure("n", "median", "x"), "measure.kind: expected count, sum or distinct"),
        (lambda: Measure("n", "sum"), "measure n: column"),
        (lambda: Measure("n", "distinct", "x", lg_k=30), "measure.lg_k: must be in 4..21"),
        (lambda: Aggregate("s", Session()), "a session window needs a group_by key"),
        (lambda: Aggregate("a b", Tumbling(dt.timedelta(minutes=1))), "aggregate.name: expected an identifier"),
        (lambda: Aggregate("a", Tumbling(dt.timedelta(minutes=1)), output_mode="complete"), "output_mode must be append or update"),
        (lambda: Aggregate("a", Tumbling(dt.timedelta(minutes=1)), group_by=("events",)), "output column names must be unique"),
        (lambda: parse_duration("ten minutes", "watermark.delay"), "watermark.delay: expected a duration"),
        (lambda: Pipeline.from_dict({"aggregates": [{"name": "x", "window": {"type": "sliding"}}]}), r"aggregates\[0\].window.type"),
    ],
)
def test_invalid_definitions_name_the_field_and_the_rule(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_stream_command_refuses_an_invalid_pipeline_file_naming_the_field(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from headwater.cli.main import cli

    monkeypatch.setenv("HEADWATER_HOME", str(tmp_path / "home"))
    path = tmp_path / "bad.toml"
    path.write_text('[watermark]\ndelay = "soon"\n')
    result = CliRunner().invoke(cli, ["stream", "--pipeline", str(path)])
    assert result.exit_code == 2
    assert "watermark.delay: expected a duration" in result.output
